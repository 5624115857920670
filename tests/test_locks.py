"""Lock files: a link, or anything else planted at a lock's name, is refused, and what it points to is untouched."""

import os

import pytest

from hpu.cli import main
from hpu.files import LOCK_NAME, OutputError, claim, shared_lock

VICTIM = "a file outside the output folder\n"


@pytest.fixture
def planted(tmp_path):
    """An output folder whose lock name is a symbolic link to a file elsewhere."""
    victim = tmp_path / "victim"
    victim.write_text(VICTIM)
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    return out, victim


def test_a_linked_lock_is_refused_by_a_command_and_its_target_untouched(planted, tmp_path, capsys):
    out, victim = planted
    (tmp_path / "any.vcd").write_text("$enddefinitions $end\n")
    assert main(["power", str(tmp_path / "any.vcd"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"hpu: {out / LOCK_NAME} is a symbolic link, not an hpu lock file: remove it, or choose another "
                   "folder"]
    assert victim.read_text() == VICTIM and sorted(os.listdir(out)) == [LOCK_NAME]


@pytest.mark.parametrize("hold", [claim, shared_lock])
def test_claim_and_shared_lock_refuse_a_linked_lock(planted, hold):
    out, victim = planted
    with pytest.raises(OutputError, match="is a symbolic link, not an hpu lock file"):
        hold(out).__enter__()
    assert victim.read_text() == VICTIM


@pytest.mark.parametrize("hold", [claim, shared_lock])
def test_a_dangling_link_is_refused_and_nothing_is_created(tmp_path, hold):
    (tmp_path / LOCK_NAME).symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="is a symbolic link"):
        hold(tmp_path).__enter__()
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("hold", [claim, shared_lock])
def test_a_hard_link_or_a_fifo_at_the_lock_name_is_refused(tmp_path, hold):
    victim = tmp_path / "victim"
    victim.write_text(VICTIM)
    linked, fifo = tmp_path / "linked", tmp_path / "fifo"
    linked.mkdir()
    fifo.mkdir()
    os.link(victim, linked / LOCK_NAME)
    os.mkfifo(fifo / LOCK_NAME)
    for folder in (linked, fifo):
        with pytest.raises(OutputError, match="is not an hpu lock file of yours"):
            hold(folder).__enter__()
    assert victim.read_text() == VICTIM


def test_an_earlier_runs_lock_file_is_reused(tmp_path):
    (tmp_path / LOCK_NAME).write_text("12345678")
    with claim(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
    with shared_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).is_file()
    with claim(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())


def test_a_link_planted_at_an_output_name_is_removed_not_followed(tmp_path):
    """An output written in place (a tool's log) would follow a link left at its name, dangling or not."""
    victim = tmp_path / "victim"
    victim.write_text(VICTIM)
    out = tmp_path / "out"
    out.mkdir()
    (out / "tool.log").symlink_to(victim)
    (out / "new.log").symlink_to(tmp_path / "nowhere")
    (out / "run-1").symlink_to(tmp_path)
    with claim(out, outputs=["tool.log", "new.log", "run-*"]):
        assert sorted(os.listdir(out)) == [LOCK_NAME]
    assert victim.read_text() == VICTIM and tmp_path.is_dir()
