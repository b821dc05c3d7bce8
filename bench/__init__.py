"""The benchmark's scenarios (``make bench``) and its own tools (h2load driver, bare-proxy
baseline, statistics, failover drill, gateway profiler); the meshes and workloads they run
come from :mod:`testkit`."""
