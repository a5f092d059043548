"""Issue 22, keys that never misfire: focus decides what a key means. Typed text is text, the
run's commands act only from charts and tables, esc steps back one layer at a time; and the
smaller promises of issues 20 and 22 around them (status messages that expire, a silent daemon
named as such, a newer schema refused, the runs list at 80×24, the `running` filter, `b`)."""
from __future__ import annotations

import fcntl
import os
import socket
import string
import time

import pytest

from store.commands import ack, complete, enqueue
from store.db import connect
from store.runs import update_run
from tui.app import LvmdTui
from tui.run_screen import RunScreen
from tui.runs_screen import RunsScreen
from tui.widgets.chart import Chart
from tui.widgets.runs import RunList
from tui.widgets.status import StatusBar

from test_tui import db, make_run, plain, run_screen, wait_for  # noqa: F401  (db: fixture)

pytestmark = pytest.mark.anyio
# what a person can type: letters, digits, punctuation and the space (not tab, enter, form feeds)
TYPED = "".join(ch for ch in string.printable if ch not in "\t\n\r\x0b\x0c")


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


def commands(db) -> list[tuple[str, str]]:
    conn = connect(db, readonly=True)
    try:
        return [tuple(r) for r in conn.execute("SELECT verb, issued_by FROM commands")]
    finally:
        conn.close()


def record_notes(app) -> list[str]:
    """Every message the app shows, kept (a toast expires; a loaded machine can be slower)."""
    said: list[str] = []
    notify = app.notify
    app.notify = lambda message, **kw: (said.append(str(message)), notify(message, **kw))
    return said


def picker_open(app) -> bool:
    return type(app.screen).__name__ == "ChoiceScreen"


async def type_into(pilot, box) -> None:
    await pilot.press(*TYPED)
    await pilot.pause()
    assert box.value == TYPED, f"{box.id}: {box.value!r}"


async def test_every_printable_key_typed_into_every_input_is_text_and_sends_no_command(db):
    run_id = make_run(db)
    app = LvmdTui(db)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.query_one(RunList).row_count,
                       "the runs")
        await pilot.press("slash")                                    # the runs filter
        box = app.screen.query_one("#runs-filter")
        assert box.has_focus
        await type_into(pilot, box)
        await pilot.press("escape", "escape")                          # clears, then back to the list
        assert app.screen.query_one(RunList).has_focus and not box.display
        await pilot.press("enter")
        screen = await run_screen(app, pilot)
        for tab, box_id in (("4", "#config-search"), ("3", "#events-filter")):
            await pilot.press(tab, "slash")                            # `/` focuses the shown view's search
            box = screen.query_one(box_id)
            assert box.has_focus, box_id
            await type_into(pilot, box)
            await pilot.press("escape")                                # clears …
            assert box.value == "" and box.has_focus
            await pilot.press("escape")                                # … then steps back one layer
            assert not box.has_focus and isinstance(app.screen, RunScreen)
        for tab, key in (("1", "m"), ("3", "f")):                     # the metric picker, the event kinds
            await pilot.press(tab, key)
            await wait_for(pilot, lambda: picker_open(app), f"the picker of {key}", timeout=5)
            await type_into(pilot, app.screen.query_one("#choice-search"))
            await pilot.press("escape", "escape")
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), "the picker closed")
        assert all(c.spec.title == c.plot.title.split(" ~")[0] for c in screen.query(Chart).results(Chart))
        await pilot.pause(0.3)
        assert commands(db) == [], "a typed key was taken for a command"
        await pilot.press("1", "escape")                               # and esc on a chart: back to the runs
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), "the runs screen")
    assert run_id


async def test_run_keys_act_from_charts_and_tables_only(db):
    """`rho` typed on the Config tab without focusing its box once sent `resume` twice."""
    run_id = make_run(db)
    app = LvmdTui(db, run_id=run_id)
    said = record_notes(app)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await run_screen(app, pilot)
        await pilot.press("4", *"rho", "p", "e", "c", "s")            # the config lines have the focus
        await pilot.pause(0.3)
        assert commands(db) == [] and isinstance(app.screen, RunScreen)
        assert any("from a chart or a table" in m for m in said)
        await pilot.press("1", "p")                                    # a chart has the focus: p pauses
        assert isinstance(screen.focused, Chart)
        await wait_for(pilot, lambda: commands(db), "the pause")
        assert commands(db) == [("pause", "tui")]


async def test_a_commands_outcome_leaves_the_status_line_at_the_next_key(db, conn):
    run_id = make_run(db)
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await run_screen(app, pilot)
        command = enqueue(conn, run_id, "checkpoint", issued_by="tui")
        ack(conn, command, 199)
        complete(conn, command, result={"checkpoint": "last.pt"})
        status = screen.query_one(StatusBar)
        await wait_for(pilot, lambda: "checkpoint saved at step 199" in plain(status), "the outcome")
        await pilot.press("1")                                         # the next key
        await pilot.pause()
        assert "checkpoint saved" not in plain(status)


def test_a_commands_outcome_expires_by_the_clock():
    from tui.widgets.status import NOTE_S, CommandNotes

    notes = CommandNotes()                                             # unattended: NOTE_S after it ended
    done = {"id": 1, "verb": "pause", "state": "done", "acked_step": 5, "done_at": 1000.0}
    assert notes.note((done,), mono=50.0, wall=1001.0) == ("paused at step 5", "green")
    assert notes.note((done,), mono=50.0 + NOTE_S, wall=1001.0 + NOTE_S) is None
    assert CommandNotes().note((done,), mono=0.0, wall=1000.0 + 3600) is None  # ended an hour before we looked
    pending = {**done, "id": 2, "state": "pending"}
    assert CommandNotes().note((pending,), mono=1e6, wall=1e6)[0] == "pause: sent, waiting for the daemon"


@pytest.fixture()
def conn(db):
    c = connect(db)
    yield c
    c.close()


async def test_a_silent_daemon_that_holds_its_lock_is_not_responding_with_no_speed_or_eta(db, conn, tmp_path):
    """SIGSTOP a daemon past the stale mark: its lock is held, its heartbeat old. The TUI says
    `not responding for N s` and shows no speed or ETA; once nothing holds the lock, `silent`."""
    run_id = make_run(db, heartbeat_age=30.0)
    out = tmp_path / "run-folder"
    out.mkdir()
    update_run(conn, run_id, out_dir=str(out), host=socket.gethostname())
    holder = os.open(out / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)                                 # as the stopped daemon holds it
    try:
        app = LvmdTui(db, run_id=run_id)
        async with app.run_test(size=(120, 30)) as pilot:
            screen = await run_screen(app, pilot)
            where = plain(screen.query_one(StatusBar)).splitlines()[0]
            assert "running? not responding for " in where and "st/s" not in where and "ETA" not in where
            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), "the runs")
            table = app.screen.query_one(RunList)
            await wait_for(pilot, lambda: table.row_count == 1, "the row")
            assert "not responding for " in table.get_cell(str(run_id), "state").plain
    finally:
        os.close(holder)
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await run_screen(app, pilot)
        where = plain(screen.query_one(StatusBar)).splitlines()[0]
        assert "running? silent " in where and "ETA" not in where     # gone: the next lvmd command marks it crashed


async def test_a_database_upgraded_under_the_tui_to_a_newer_schema_is_refused(db, conn):
    run_id = make_run(db)
    app = LvmdTui(db, run_id=run_id, fallback_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await run_screen(app, pilot)
        conn.execute("PRAGMA user_version = 99")                       # a newer lvmd migrated the file
        update_run(conn, run_id, heartbeat_at=time.time())
        await wait_for(pilot, lambda: app.return_code == 1, "the refusal")
    assert "schema version 99 is newer than this lvmd" in app.fatal_error


def test_launch_refuses_a_newer_schema_in_one_line(db, capsys):
    from tui.launch import main

    make_run(db)
    c = connect(db)
    c.execute("PRAGMA user_version = 99")
    c.close()
    assert main([str(db)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "schema version 99 is newer than this lvmd" in err


async def test_the_runs_list_at_80x24_keeps_id_and_a_whole_state_in_view_and_marks_the_row(db, conn):
    long = make_run(db, name="demo-wiki-v2.1-20261129-123456-with-a-long-suffix")
    other = make_run(db, name="another-run-with-a-name-as-long-as-they-come", state="finished")
    app = LvmdTui(db)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.query_one(RunList).row_count == 2, "the runs")
        table = app.screen.query_one(RunList)
        update_run(conn, long, state="evaluating")                     # after the column was sized
        await wait_for(pilot, lambda: table.get_cell(str(long), "state").plain == "evaluating", "evaluating")
        await pilot.pause(0.3)
        for _ in range(12):                                            # scroll sideways to the last column
            await pilot.press("right")

        def shown() -> str:
            return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())

        # the table measures a widened cell when it is next idle: on a loaded machine, after a few polls
        await wait_for(pilot, lambda: " evaluating " in shown() and " finished " in shown() and "demo-wiki" not in shown(),
                       "both states painted, the name scrolled away")
        text = shown()
        finished = next(ln.split() for ln in text.splitlines() if " finished " in ln)
        evaluating = next(ln.split() for ln in text.splitlines() if " evaluating " in ln)
        # scrolled to the far right: the marker, the id and the whole state stay (fixed columns)
        assert finished[:3] == ["▶", str(other), "finished"] and evaluating[:2] == [str(long), "evaluating"], text
        assert "demo-wiki" not in text                                # the name did scroll away
        await pilot.press("down")
        await pilot.pause()
        assert table.get_cell(str(long), "mark").plain.startswith("▶")
        assert not table.get_cell(str(other), "mark").plain.startswith("▶")


async def test_running_matches_every_run_a_daemon_is_at_work_on(db):
    ids = {state: make_run(db, name=f"r-{state}", state=state)
           for state in ("running", "evaluating", "starting", "stopping", "paused", "finished", "crashed")}
    app = LvmdTui(db)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: app.screen.query_one(RunList).row_count == len(ids), "the runs")
        table = app.screen.query_one(RunList)
        await pilot.press("slash", *"running")
        await pilot.pause()
        assert {r.state for r in table.runs} == {"running", "evaluating", "starting", "stopping"}
        await pilot.press("escape", *"live")
        await pilot.pause()
        assert {r.state for r in table.runs} == {"running", "evaluating", "starting", "stopping", "paused"}


async def test_b_says_what_happens_to_a_chosen_baseline(db):
    a = make_run(db, name="a", state="finished")
    b = make_run(db, name="b")
    app = LvmdTui(db)
    said = record_notes(app)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: app.screen.query_one(RunList).row_count == 2, "the runs")
        table = app.screen.query_one(RunList)
        messages = lambda: said                                        # noqa: E731
        table.move_cursor(row=1)                                       # a (newest first)
        await pilot.press("b")
        table.move_cursor(row=0)
        await pilot.press("b")
        await pilot.pause()
        assert f"baseline: run {b} (replaces run {a})" in messages()
        await pilot.press("enter")                                     # open the baseline itself
        screen = await run_screen(app, pilot)
        assert any(f"run {b} is the baseline" in m for m in messages())
        await pilot.press("b")
        await pilot.pause()
        assert any(f"run {b} is the baseline itself: nothing to overlay" in m for m in messages())
        assert screen.baseline is None


def test_lvmd_tui_takes_db_as_every_other_command_does(tmp_path):
    from conftest import lvmd

    missing = tmp_path / "none.db"
    proc = lvmd("tui", "--db", str(missing), "--run", "1")
    assert proc.returncode == 1 and "no such database" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    proc = lvmd("tui", str(tmp_path / "a.db"), "--db", str(tmp_path / "b.db"))
    assert proc.returncode == 1 and "two databases named" in proc.stderr, proc.stderr
