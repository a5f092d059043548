"""Issue 22, events that follow: newest at the bottom and followed while you are at the bottom,
a 5CAT's progress rows folded into one line, a kind filter (`f`), words (`/`), End without Tab,
and epochs counted from 1 by the step an event belongs to."""
from __future__ import annotations

import pytest

from store.writer import SqliteSink
from tui.app import LvmdTui
from tui.widgets.events import EventLog

from test_tui import db, make_run, run_screen, wait_for  # noqa: F401  (db: fixture)

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


def add_events(db, run_id: int, events) -> None:
    sink = SqliteSink(db, run_id, flush_seconds=0.0)
    for kind, step, epoch, detail in events:
        sink.event(kind, step=step, epoch=epoch, detail=detail)
    sink.close()


def shown(log: EventLog) -> list[list[str]]:
    """The rows on screen now, split into words."""
    top = int(log.scroll_y)
    return [log.line_text(i).plain.split() for i in range(top, min(len(log.rows), top + log.size.height))]


async def test_events_follow_the_newest_fold_5cat_progress_and_filter_by_kind_and_words(db):
    run_id = make_run(db, epochs=2, events=[("attenuate", s) for s in range(60)])  # epochs end at 99, 199
    progress = [("eval_progress", 199, 1, {"done": i, "total": 12, "stage": f"stage {i}", "trigger": "epoch"})
                for i in range(1, 13)]
    # at an epoch's end the trainer writes the checkpoint with the next epoch's index, the state with its own
    add_events(db, run_id, [("checkpoint", 99, 1, {"which": "last", "epoch": 0}), ("state", 99, 0, {"state": "evaluating"}),
                            ("skip", 150, 1, {"pos": -0.1}), *progress])
    app = LvmdTui(db, run_id=run_id)
    async with app.run_test(size=(100, 24)) as pilot:
        screen = await run_screen(app, pilot)
        await pilot.press("3")
        log = screen.query_one(EventLog)
        await wait_for(pilot, lambda: log.has_focus and len(log.rows) == 64, "the log, focused")
        await pilot.pause()
        # one line for the evaluation's twelve progress rows
        folded = [log.line_text(i).plain for i in range(len(log.rows)) if "eval_progress" in log.line_text(i).plain]
        assert len(folded) == 1 and "5CAT 12/12 stage 12" in folded[0] and "12 progress rows" in folded[0]
        # one epoch per step, counted from 1: the end of epoch 1 is epoch 1 for both rows
        at_99 = [log.line_text(i).plain.split() for i in range(len(log.rows)) if log.rows[i]["step"] == 99]
        assert [(r[1], r[2]) for r in at_99] == [("1", "checkpoint"), ("1", "state")]
        assert "ep=1" in " ".join(at_99[0])
        # newest at the bottom, followed
        assert log.max_scroll_y > 0 and log.scroll_y == log.max_scroll_y and shown(log)[-1][2] == "eval_progress"
        add_events(db, run_id, [("attenuate", 200 + i, 2, None) for i in range(5)])
        await wait_for(pilot, lambda: len(log.rows) == 69, "the new rows")
        await pilot.pause()
        assert log.scroll_y == log.max_scroll_y and shown(log)[-1][0] == "204"
        await pilot.press("up", "up", "up")                            # scrolled up: the view stays put
        at = log.scroll_y
        add_events(db, run_id, [("attenuate", 210, 2, None)])
        await wait_for(pilot, lambda: len(log.rows) == 70, "one more row")
        await pilot.pause()
        assert log.scroll_y == at < log.max_scroll_y and not log.following
        await pilot.press("end")                                       # End, no Tab needed: the newest again
        await pilot.pause()
        assert log.scroll_y == log.max_scroll_y and log.following and shown(log)[-1][0] == "210"
        await pilot.press("f")                                         # one kind
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ChoiceScreen", "the kinds")
        await pilot.press(*"skip", "enter")
        await wait_for(pilot, lambda: [r["kind"] for r in log.rows] == ["skip"], "only skips")
        await pilot.press("f", "enter")                                # the highlighted choice: skip again…
        await pilot.pause()
        await pilot.press("f", *"all kinds", "enter")                  # … then all kinds
        await wait_for(pilot, lambda: len(log.rows) == 70, "all rows")
        await pilot.press("slash", *"-attenuate", "enter")             # words: -word leaves a word out
        await wait_for(pilot, lambda: {r["kind"] for r in log.rows} == {"checkpoint", "state", "skip",
                                                                         "eval_progress"}, "no attenuate")
        assert log.has_focus                                           # enter keeps the words, back to the log
