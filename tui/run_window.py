"""RunWindow: which stretch of the run the screen shows and against what, and the keys that change
it: the epoch it replays (`[` `]` `l`), the zoom on the newest steps (`z`) and the baseline
overlay (`b`); and the status line's notes that say which mode is on. The tail reads what the
window asks for (App.follow); the screen draws what comes back."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tui.plots import shown_epoch
from tui.widgets.gates import GateTable
from tui.widgets.status import eval_progress

if TYPE_CHECKING:
    from tui.run_screen import RunScreen

MAX_ZOOM = 3  # 1/4, 1/16, 1/64 of the steps; one more press shows the whole run again


class RunWindow:
    def __init__(self, screen: "RunScreen") -> None:
        self.screen = screen
        self.replay_epoch: int | None = None  # None: live
        self.zoom = 0                          # step charts: the newest 4^-zoom of the steps
        self.show_baseline = True

    # -- replay ----------------------------------------------------------------------------------
    def replay(self, delta: int) -> None:
        """One epoch back (delta −1) or forward; forward past the last finished epoch is live."""
        run, notify = self.screen.snapshot, self.screen.notify
        last = run.last_epoch if run else None
        if last is None:
            notify("no finished epoch to replay yet", severity="warning")
            return
        if self.replay_epoch is None:
            if delta > 0:
                notify("already live")
                return
            target = last
        else:
            target = self.replay_epoch + delta
        if target < 0:
            notify("first epoch")
            return
        self.set_replay(None if target > last else target)

    def set_replay(self, epoch: int | None) -> None:
        self.replay_epoch = epoch
        self.screen.query_one(GateTable).picked_eval_id = None
        self.screen.app.follow(replay_epoch=epoch)
        self.screen.refresh_status()  # the mode shows at once; the charts when the tail has read it

    # -- zoom and baseline -----------------------------------------------------------------------
    def cycle_zoom(self) -> None:
        self.zoom = (self.zoom + 1) % (MAX_ZOOM + 1)
        self.screen.app.follow(zoom=self.zoom)
        self.screen.refresh_status()

    def toggle_baseline(self) -> None:
        screen = self.screen
        wanted = screen.app.baseline_id
        if wanted is None:
            screen.notify("no baseline chosen: start with --baseline ID, or press b on a run in the runs list",
                          severity="warning")
            return
        if wanted == screen.run_id:
            screen.notify(f"run {screen.run_id} is the baseline itself: nothing to overlay"
                          " (b on another run in the runs list chooses another)", severity="warning")
            return
        self.show_baseline = not self.show_baseline
        screen.notify(f"baseline run {wanted} {'shown' if self.show_baseline else 'hidden'} (b)", timeout=3)
        screen.app.follow(baseline_id=wanted if self.show_baseline else None)
        if not self.show_baseline:
            screen.baseline = None
            screen.refresh_status()

    # -- what the status line says ---------------------------------------------------------------
    def notes(self) -> list[tuple[str, str]]:
        """(text, style) for each mode that changes what the charts show, after the eval's progress."""
        screen, run = self.screen, self.screen.snapshot
        notes = []
        progress = eval_progress(run)
        if progress:
            notes.append((progress, "bold cyan"))
        if self.replay_epoch is not None:
            last = run.last_epoch
            notes.append((f"REPLAY e{shown_epoch(self.replay_epoch)}/{shown_epoch(last) if last is not None else '?'}"
                          " ([ ] step, l live)", "bold reverse"))
        if self.zoom:
            notes.append((f"ZOOM newest 1/{4 ** self.zoom} (z)", "bold"))
        if screen.x_kind != "step":
            notes.append((f"x: {'wall time' if screen.x_kind == 'time' else 'epoch'} (x)", "bold"))
        if screen.baseline is not None:
            notes.append((f"vs ┉run {screen.baseline.run_id} (grey)", "bright_black"))
        if screen.overlays:
            n = len(screen.overlays)
            notes.append((f"+{n} marked run{'s' if n > 1 else ''}", "yellow"))
        if screen.app.readonly:
            notes.append(("read-only", "dim"))
        return notes
