"""Where backups are stored: a local folder and a real S3-compatible store (SeaweedFS started
by the test) keep archives byte for byte, report progress, refuse names that reach outside,
and turn a missing bucket, refused credentials or an unreachable endpoint into clear errors;
retention keeps the newest archive of recent hours and days and prunes only the rest."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup.targets import (
    LocalFolderTarget,
    S3Target,
    StoredArchive,
    Target,
    archive_name,
    parse_archive_name,
    parse_target,
    select_for_pruning,
)
from registry import InvalidInput, NotFound, PermissionDenied, Unavailable
from testkit import SeaweedFs, free_port, running_seaweedfs

ARCHIVE_BYTES = 12 * 1024 * 1024 + 12345
"""Over boto3's 8 MiB multipart threshold: the S3 upload goes in parts."""
NOW_UNIX = datetime(2026, 1, 10, 12, 30, tzinfo=UTC).timestamp()
BAD_NAMES = ["", "../escape.smbk", "a/b.smbk", "..", "x..y", ".hidden", "back\\slash", "nul\x00"]


def _random_file(path: Path, size_bytes: int) -> Path:
    path.write_bytes(os.urandom(size_bytes))
    return path


def _archive(cluster: str, at_unix: float) -> StoredArchive:
    return StoredArchive(archive_name(cluster, at_unix), 100, at_unix)


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No AWS settings but the test's: no profile or shared files, and no instance metadata
    lookups (boto3 would ask a link-local address for credentials)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    yield


@pytest.fixture
async def seaweedfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws_environment: None
) -> AsyncIterator[SeaweedFs]:
    """A SeaweedFS S3 server, its endpoint and keys in the standard AWS variables."""
    async with running_seaweedfs(tmp_path) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
        yield server


async def _round_trip(target: Target, tmp_path: Path) -> None:
    """Upload, list, download (byte-identical, progress adding up), delete."""
    source = _random_file(tmp_path / "source.bin", ARCHIVE_BYTES)
    name = archive_name("prod", NOW_UNIX)
    uploaded: list[int] = []
    await target.upload(source, name, progress=uploaded.append)
    assert sum(uploaded) == ARCHIVE_BYTES
    assert len(uploaded) > 1

    listed = await target.list()
    assert [(each.name, each.size_bytes) for each in listed] == [(name, ARCHIVE_BYTES)]
    assert listed[0].cluster == "prod"
    assert listed[0].taken_at_unix == NOW_UNIX

    copy = tmp_path / "copy.bin"
    downloaded: list[int] = []
    await target.download(name, copy, progress=downloaded.append)
    assert copy.read_bytes() == source.read_bytes()
    assert sum(downloaded) == ARCHIVE_BYTES

    await target.delete(name)
    assert await target.list() == []
    await target.delete(name)  # already gone: nothing to do
    with pytest.raises(NotFound, match=name):
        await target.download(name, tmp_path / "again.bin")


async def _refuses_bad_names(target: Target, tmp_path: Path) -> None:
    source = _random_file(tmp_path / "small.bin", 10)
    for name in BAD_NAMES:
        with pytest.raises(InvalidInput, match="archive name"):
            await target.upload(source, name)
        with pytest.raises(InvalidInput, match="archive name"):
            await target.download(name, tmp_path / "out.bin")
        with pytest.raises(InvalidInput, match="archive name"):
            await target.delete(name)


class TestArchiveNames:
    """Archive names carry the cluster and the UTC second they were taken."""

    def test_name_reads_back(self) -> None:
        name = archive_name("eu-west_2", NOW_UNIX + 0.75)
        assert name == "sessionmesh-eu-west_2-20260110T123000Z.smbk"
        assert parse_archive_name(name) == ("eu-west_2", NOW_UNIX)

    @given(
        cluster=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
        at_unix=st.integers(min_value=0, max_value=4_000_000_000),
    )
    def test_every_name_reads_back(self, cluster: str, at_unix: int) -> None:
        assert parse_archive_name(archive_name(cluster, at_unix)) == (cluster, float(at_unix))

    @pytest.mark.parametrize(
        "name",
        [
            "notes.txt",
            "sessionmesh-prod-20260110T123000Z.tar",
            "sessionmesh--20260110T123000Z.smbk",
            "sessionmesh-prod-20261310T123000Z.smbk",
            "sessionmesh-prod-20260110T123000.smbk",
            "xsessionmesh-prod-20260110T123000Z.smbk",
        ],
    )
    def test_other_names_are_not_archives(self, name: str) -> None:
        assert parse_archive_name(name) is None

    def test_cluster_must_be_an_id(self) -> None:
        with pytest.raises(InvalidInput, match="cluster"):
            archive_name("../etc", NOW_UNIX)


class TestParseTarget:
    """A folder path, or s3://bucket/prefix."""

    def test_folder(self, tmp_path: Path) -> None:
        target = parse_target(str(tmp_path / "backups"))
        assert isinstance(target, LocalFolderTarget)
        assert target.folder == tmp_path / "backups"

    def test_s3_with_and_without_prefix(self) -> None:
        target = parse_target("s3://archive-bucket/mesh/prod/")
        assert isinstance(target, S3Target)
        assert (target.bucket, target.prefix) == ("archive-bucket", "mesh/prod")
        bare = parse_target("s3://archive-bucket", endpoint_url="http://127.0.0.1:9")
        assert isinstance(bare, S3Target)
        assert (bare.bucket, bare.prefix) == ("archive-bucket", "")
        assert bare.describe() == "s3://archive-bucket at http://127.0.0.1:9"

    @pytest.mark.parametrize("text", ["", "  ", "s3://", "s3:///prefix", "gs://bucket/x"])
    def test_refused(self, text: str) -> None:
        with pytest.raises(InvalidInput, match="target"):
            parse_target(text)

    def test_describe_shows_no_secret(self, aws_environment: None) -> None:
        target = S3Target("bucket", endpoint_url="https://user:hunter2@store.example:9000")
        assert "hunter2" not in target.describe()
        assert target.describe() == "s3://bucket at https://store.example:9000"


class TestLocalFolderTarget:
    """Archives in a folder: whole files, progress reported, names checked."""

    async def test_round_trip(self, tmp_path: Path) -> None:
        await _round_trip(LocalFolderTarget(tmp_path / "new" / "backups"), tmp_path)

    async def test_bad_names_refused(self, tmp_path: Path) -> None:
        await _refuses_bad_names(LocalFolderTarget(tmp_path / "backups"), tmp_path)
        assert not (tmp_path / "backups").exists()

    async def test_lists_only_archives_and_leaves_no_temporary_file(self, tmp_path: Path) -> None:
        folder = tmp_path / "backups"
        folder.mkdir()
        (folder / "notes.txt").write_text("the operator's own file")
        (folder / "sub").mkdir()
        target = LocalFolderTarget(folder)
        name = archive_name("prod", NOW_UNIX)
        await target.upload(_random_file(tmp_path / "a.bin", 1000), name)
        assert [each.name for each in await target.list()] == [name]
        assert sorted(path.name for path in folder.iterdir()) == sorted([name, "notes.txt", "sub"])

    async def test_missing_folder_and_archive(self, tmp_path: Path) -> None:
        target = LocalFolderTarget(tmp_path / "nowhere")
        with pytest.raises(NotFound, match="does not exist"):
            await target.list()
        with pytest.raises(NotFound, match="does not exist"):
            await target.download(archive_name("prod", NOW_UNIX), tmp_path / "out.bin")
        with pytest.raises(InvalidInput, match="no such file"):
            await target.upload(tmp_path / "absent.bin", archive_name("prod", NOW_UNIX))

    async def test_a_file_where_the_folder_should_be(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("x")
        target = LocalFolderTarget(tmp_path / "file")
        with pytest.raises(InvalidInput, match="not a folder"):
            await target.list()
        with pytest.raises(InvalidInput, match="not a folder"):
            await target.upload(_random_file(tmp_path / "a.bin", 10), "a.smbk")


class TestS3Target:
    """Archives in a real S3-compatible store (SeaweedFS)."""

    async def test_round_trip_under_a_prefix(self, seaweedfs: SeaweedFs, tmp_path: Path) -> None:
        await seaweedfs.create_bucket("backups")
        client = seaweedfs.client()
        foreign = {"mesh/notes.txt", "mesh/deeper/" + archive_name("prod", NOW_UNIX)}
        for key in foreign:
            client.put_object(Bucket="backups", Key=key, Body=b"not ours")
        target = parse_target("s3://backups/mesh")
        assert target.describe() == f"s3://backups/mesh at {seaweedfs.endpoint_url}"
        await _round_trip(target, tmp_path)
        await _refuses_bad_names(target, tmp_path)
        kept = {each["Key"] for each in client.list_objects_v2(Bucket="backups")["Contents"]}
        assert kept == foreign

    async def test_missing_bucket(self, seaweedfs: SeaweedFs, tmp_path: Path) -> None:
        target = parse_target("s3://no-such-bucket/mesh")
        name = archive_name("prod", NOW_UNIX)
        source = _random_file(tmp_path / "a.bin", 1000)
        with pytest.raises(NotFound, match="bucket no-such-bucket does not exist"):
            await target.upload(source, name)
        with pytest.raises(NotFound, match="bucket no-such-bucket does not exist"):
            await target.list()
        with pytest.raises(NotFound, match="bucket no-such-bucket does not exist"):
            await target.download(name, tmp_path / "out.bin")

    async def test_refused_credentials(
        self, seaweedfs: SeaweedFs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await seaweedfs.create_bucket("backups")
        name = archive_name("prod", NOW_UNIX)
        source = _random_file(tmp_path / "a.bin", 1000)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(PermissionDenied, match="refused the credentials") as refused:
            await parse_target("s3://backups").upload(source, name)
        assert "not-the-secret" not in str(refused.value)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown-key")
        with pytest.raises(PermissionDenied, match="AWS_ACCESS_KEY_ID"):
            await parse_target("s3://backups").list()

    async def test_no_credentials(self, aws_environment: None, tmp_path: Path) -> None:
        target = S3Target("backups", endpoint_url=f"http://127.0.0.1:{free_port()}")
        with pytest.raises(InvalidInput, match="no S3 credentials"):
            await target.list()

    async def test_unreachable_endpoint(
        self, aws_environment: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
        endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        with pytest.raises(Unavailable, match=f"endpoint {endpoint} unreachable"):
            await S3Target("backups", endpoint_url=endpoint).list()


archive_times = st.lists(
    st.integers(min_value=int(NOW_UNIX) - 40 * 86400, max_value=int(NOW_UNIX)),
    max_size=60,
    unique=True,
)
retention = st.tuples(st.integers(0, 30), st.integers(0, 12)).filter(lambda kept: sum(kept) > 0)


class TestRetention:
    """Newest of each recent hour and day kept, the rest pruned, other files never."""

    def test_three_days_of_hourly_backups(self) -> None:
        archives = [_archive("prod", NOW_UNIX - 1800 - hour * 3600) for hour in range(72)]
        doomed = select_for_pruning(archives, keep_hourly=24, keep_daily=7, now_unix=NOW_UNIX)
        kept = sorted({each.name for each in archives} - {each.name for each in doomed})
        # The last 24 hours, and the 23:00 archive of each of the two days before them.
        assert len(kept) == 26
        assert archive_name("prod", datetime(2026, 1, 8, 23, tzinfo=UTC).timestamp()) in kept
        assert archive_name("prod", datetime(2026, 1, 7, 23, tzinfo=UTC).timestamp()) in kept
        assert archive_name("prod", datetime(2026, 1, 9, 12, tzinfo=UTC).timestamp()) not in kept

    def test_other_files_and_future_archives_are_never_pruned(self) -> None:
        archives = [
            StoredArchive("notes.txt", 1, 0.0),
            _archive("prod", NOW_UNIX + 7200),
            *[_archive("prod", NOW_UNIX - days * 86400) for days in range(5)],
        ]
        doomed = select_for_pruning(archives, keep_hourly=0, keep_daily=1, now_unix=NOW_UNIX)
        assert [each.name for each in doomed] == [each.name for each in archives[3:]][::-1]

    def test_counts_are_checked(self) -> None:
        with pytest.raises(InvalidInput, match="keeps nothing"):
            select_for_pruning([], keep_hourly=0, keep_daily=0, now_unix=NOW_UNIX)
        with pytest.raises(InvalidInput, match="negative"):
            select_for_pruning([], keep_hourly=-1, keep_daily=3, now_unix=NOW_UNIX)

    @settings(max_examples=300, deadline=None)
    @given(prod=archive_times, staging=archive_times, counts=retention)
    def test_properties(self, prod: list[int], staging: list[int], counts: tuple[int, int]) -> None:
        keep_hourly, keep_daily = counts
        archives = [_archive("prod", at) for at in prod] + [
            _archive("staging", at) for at in staging
        ]
        doomed = select_for_pruning(
            archives, keep_hourly=keep_hourly, keep_daily=keep_daily, now_unix=NOW_UNIX
        )
        doomed_names = {each.name for each in doomed}
        assert len(doomed_names) == len(doomed)
        assert doomed_names <= {each.name for each in archives}
        kept = [each for each in archives if each.name not in doomed_names]
        for cluster, times in (("prod", prod), ("staging", staging)):
            kept_times = sorted(
                each.taken_at_unix or 0.0 for each in kept if each.cluster == cluster
            )
            if times:
                assert kept_times[-1] == max(times), "the newest archive is kept"
            assert len(kept_times) <= keep_hourly + keep_daily
            for period_seconds, count in ((3600, keep_hourly), (86400, keep_daily)):
                periods = sorted({at // period_seconds for at in times}, reverse=True)[:count]
                for period in periods:
                    newest = max(at for at in times if at // period_seconds == period)
                    assert newest in kept_times, "the newest of each recent period is kept"
        again = select_for_pruning(
            kept, keep_hourly=keep_hourly, keep_daily=keep_daily, now_unix=NOW_UNIX
        )
        assert again == [], "pruning is idempotent"
