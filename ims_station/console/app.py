"""The console's Textual application (docs/console.md): a station view and a relay view.

Station view (a gateway's status API, :class:`~ims_station.console.sources.StationSource`): tabs
Channels (rate, latency, last sample, clipping, time quality, a live sparkline of the selected
channel; Enter opens the channel's detail), Link (serial link counters per port), Outbox/Uplink,
Keys, Stages (trigger statistics, recent triggers, noble-gas phase).  Actions, each behind a
confirmation dialog and answered on screen: ``c`` start a calibration, ``r`` request a resend of
a range of board sequence numbers, ``k`` switch to the next key (edge/actions.py does them).

Relay view (MQTT, :class:`~ims_station.console.sources.RelaySource`): one row per station (online,
age of its last SOH, outbox depth and oldest frame, frames acknowledged, alarms) and the recent
events.

Made for 80x24 over SSH: one table per tab, no colour needed to read a state (words: ``DOWN``,
``NO``, ``CLIP``).  Data is fetched off the event loop (``asyncio.to_thread``) once a second.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import (Button, DataTable, Footer, Header, Input, Label, Static, TabbedContent,
                             TabPane)

from ims_station.console import sources as src

REFRESH_S = 1.0


class Confirm(ModalScreen[bool]):
    """Yes / no: ``y`` or Enter confirms, ``n`` or Escape cancels."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]
    DEFAULT_CSS = """
    Confirm { align: center middle; }
    #dialog { width: 60; height: auto; border: thick $accent; padding: 1 2; background: $surface; }
    #dialog Horizontal, #buttons { height: 3; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question, id="question")
            with Grid(id="buttons"):
                yield Button("Yes (y)", id="yes", variant="warning")
                yield Button("No (n)", id="no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def _pressed(self, ev: Button.Pressed) -> None:
        self.dismiss(ev.button.id == "yes")


class ResendRange(ModalScreen[tuple[int, int] | None]):
    """Asks for the range of board sequence numbers: ``FIRST-LAST`` (or one number)."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    ResendRange { align: center middle; }
    #dialog { width: 60; height: auto; border: thick $accent; padding: 1 2; background: $surface; }
    """

    def __init__(self, hint: str) -> None:
        super().__init__()
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Resend board packets FIRST-LAST ({self.hint}); Enter to continue")
            yield Input(placeholder="e.g. 100-120", id="range")
            yield Label("", id="error")

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    def _submitted(self, ev: Input.Submitted) -> None:
        text = ev.value.strip()
        a, _, b = text.partition("-")
        if not a.strip().isdigit() or (b and not b.strip().isdigit()):
            self.query_one("#error", Label).update("write FIRST-LAST, e.g. 100-120")
            return
        first = int(a)
        self.dismiss((first, int(b) if b else first))


class ChannelDetail(Screen):
    """One channel: its stream counters, time quality and a wide waveform."""

    BINDINGS = [Binding("escape,q", "app.pop_screen", "back")]

    def __init__(self, code: str, app_ref: "ConsoleApp") -> None:
        super().__init__()
        self.code, self.app_ref = code, app_ref

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"Channel {self.code}", id="title")
        yield Static("", id="detail")
        yield Static("", id="dwave")
        yield Footer()

    async def on_mount(self) -> None:
        await self.update_detail()
        self.set_interval(self.app_ref.refresh_s, self.update_detail)

    async def update_detail(self) -> None:
        doc = self.app_ref.last.get("status") or {}
        extra = (self.app_ref.last.get("extra") or {}).get("channels") or {}
        lines = []
        for port, code, s in src.channels(doc):
            if code == self.code:
                lines.append(f"port {port}  rate {(s.get('rate_mhz') or 0) / 1000:g} sps  samples {s.get('samples', 0)}")
                lines.append(f"gaps {s.get('gaps', 0)} ({s.get('gap_us', 0) / 1e6:g} s)  overlaps {s.get('overlaps', 0)}"
                             f"  dropped {s.get('samples_dropped', 0)}")
        i = extra.get(self.code) or {}
        lines.append(f"time quality {i.get('time_quality', '-')}  flags {','.join(i.get('flags') or []) or '-'}")
        lines.append(f"clipping now {'YES' if i.get('clipped') else 'no'}  chunks clipped {i.get('clipped_chunks', 0)}"
                     f"  last sample {i.get('last_sample', '-')}")
        self.query_one("#detail", Static).update("\n".join(lines))
        if self.app_ref.station is not None:
            samples = await asyncio.to_thread(self.app_ref.station.waveform, self.code)
            if samples:
                w = max(10, self.query_one("#dwave", Static).size.width or self.size.width - 2)
                self.query_one("#dwave", Static).update(
                    f"last {len(samples)} samples  min {min(samples)}  max {max(samples)}\n"
                    + src.sparkline(samples, w) + "\n" + src.sparkline(samples[len(samples) // 2:], w))


class ConsoleApp(App):
    """``ims-station console``: *station* (a StationSource) and/or *relay* (a RelaySource)."""

    TITLE = "ims-station console"
    CSS = """
    Screen { overflow: hidden hidden; }
    #tabs { height: 1fr; }
    DataTable { height: 1fr; }
    #wave { height: 1; }
    #result { height: 2; background: $boost; }
    TabPane { padding: 0; overflow: hidden hidden; }
    ContentSwitcher { overflow: hidden hidden; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("c", "calibrate", "calibrate"),
        Binding("r", "resend", "resend"),
        Binding("k", "next_key", "next key"),
        Binding("enter", "open_channel", "channel", show=False),
        *(Binding(str(i), f"tab('{name}')", name, show=False)
          for i, name in enumerate(("channels", "link", "outbox", "keys", "stages", "relay"), start=1)),
    ]
    TABS = ("channels", "link", "outbox", "keys", "stages", "relay")

    def __init__(self, station: src.StationSource | None = None, relay: src.RelaySource | None = None,
                 *, refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        if station is None and relay is None:
            raise ValueError("give a station (status API) and/or a relay (MQTT) source")
        self.station, self.relay, self.refresh_s = station, relay, refresh_s
        self.animation_level = "none"      # no tab animations: a slow SSH link redraws only what changed
        self.last: dict = {}
        self.triggers: deque = deque(maxlen=src.MAX_EVENTS)
        self.results: list[str] = []

    # -- layout --------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        with TabbedContent(id="tabs"):
            if self.station is not None:
                with TabPane("Channels", id="channels"):
                    yield DataTable(id="chan-table", cursor_type="row")
                    yield Static("", id="wave")
                with TabPane("Link", id="link"):
                    yield DataTable(id="link-table", cursor_type="row")
                with TabPane("Outbox", id="outbox"):
                    yield DataTable(id="outbox-table", cursor_type="row")
                with TabPane("Keys", id="keys"):
                    yield DataTable(id="keys-table", cursor_type="row")
                with TabPane("Stages", id="stages"):
                    yield DataTable(id="stages-table", cursor_type="row")
            if self.relay is not None:
                with TabPane("Relay", id="relay"):
                    yield DataTable(id="relay-table", cursor_type="row")
                    yield DataTable(id="events-table", cursor_type="row")
        yield Static("", id="result")
        yield Footer()

    def on_mount(self) -> None:
        def cols(table_id: str, *names: str) -> None:
            if self.query(f"#{table_id}"):
                self.query_one(f"#{table_id}", DataTable).add_columns(*names)

        cols("chan-table", "channel", "sps", "latency", "last", "clip", "time")
        cols("link-table", "port", "state", "ok", "crc", "hmac", "resent", "lost", "bytes in")
        cols("outbox-table", "item", "value")
        cols("keys-table", "item", "value")
        cols("stages-table", "item", "value")
        cols("relay-table", "station", "status", "SOH age", "outbox", "oldest", "acked", "alarms")
        cols("events-table", "station", "event")
        self.sub_title = self.station.where if self.station is not None else f"relay view {self.relay.host}:{self.relay.port}"
        self.set_interval(self.refresh_s, self.refresh_data)
        self.call_later(self.refresh_data)

    # -- data ----------------------------------------------------------------------------------
    async def refresh_data(self) -> None:
        """Fetch once (off the event loop) and redraw every table."""
        now = time.time()
        if self.station is not None:
            self.last = await asyncio.to_thread(self.station.poll)
            self._draw_station(now)
            code = self.selected_channel()
            if code is not None:
                samples = await asyncio.to_thread(self.station.waveform, code)
                wave = self.query_one("#wave", Static)
                w = max(10, (wave.size.width or self.size.width) - len(code) - 2)
                wave.update(f"{code} {src.sparkline(samples, w)}" if samples else f"{code}: no samples yet")
        if self.relay is not None:
            stations, events = self.relay.snapshot()
            self._fill("relay-table", src.relay_rows(stations, now))
            self._fill("events-table", [(e["station"], _event_text(e["event"])) for e in reversed(events)]
                       or [("-", "no events yet")])
            state = "connected" if self.relay.connected else "NOT connected"
            if self.station is None:
                self.sub_title = f"relay view {self.relay.host}:{self.relay.port} ({state}, {len(stations)} stations)"

    def _draw_station(self, now: float) -> None:
        last = self.last
        doc = last.get("status") or {}
        if last.get("error"):
            self.sub_title = f"{self.station.where}: {last['error']}"
            return
        problems = (last.get("health") or {}).get("problems") or []
        self.sub_title = f"{doc.get('station', '?')} " + ("OK" if not problems else "DEGRADED: " + "; ".join(problems))
        self._fill("chan-table", src.channel_rows(doc, last.get("extra"), now), keep_cursor=True)
        self._fill("link-table", src.link_rows(doc))
        self._fill("outbox-table", src.outbox_uplink_rows(doc))
        self._fill("keys-table", src.key_rows(doc))
        ev = src.last_trigger(doc)
        if ev is not None and (not self.triggers or self.triggers[-1] != ev):
            self.triggers.append(ev)
        rows = src.stage_rows(doc) + [("trigger at", f"{e.get('time')} peak {e.get('peak')}")
                                      for e in reversed(self.triggers)]
        self._fill("stages-table", rows)

    def _fill(self, table_id: str, rows: list[tuple], keep_cursor: bool = False) -> None:
        q = self.query(f"#{table_id}")
        if not q:
            return
        t = q.first(DataTable)
        row = t.cursor_row
        t.clear()
        for r in rows:
            t.add_row(*r, key=str(r[0]) if keep_cursor else None)
        if keep_cursor and rows:
            t.move_cursor(row=min(row, len(rows) - 1))

    def selected_channel(self) -> str | None:
        q = self.query("#chan-table")
        if not q:
            return None
        t = q.first(DataTable)
        if t.row_count == 0:
            return None
        return str(t.get_row_at(t.cursor_row)[0])

    # -- navigation ----------------------------------------------------------------------------
    @on(DataTable.RowSelected, "#chan-table")
    def _row_selected(self, ev: DataTable.RowSelected) -> None:
        self.action_open_channel()

    def action_tab(self, name: str) -> None:
        """Keys 1..6: Channels, Link, Outbox, Keys, Stages, Relay (those this console has)."""
        tabs = self.query_one("#tabs", TabbedContent)
        if self.query(f"TabPane#{name}"):
            tabs.active = name
            table = self.query_one(f"TabPane#{name}").query(DataTable)
            if table:
                table.first().focus()

    def action_open_channel(self) -> None:
        code = self.selected_channel()
        if code is not None and isinstance(self.screen, Screen) and not isinstance(self.screen, (ModalScreen,
                                                                                               ChannelDetail)):
            self.push_screen(ChannelDetail(code, self))

    # -- actions -------------------------------------------------------------------------------
    def show_result(self, name: str, res: dict) -> None:
        text = f"{name}: {'OK' if res.get('ok') else 'REFUSED'}: {res.get('message', res)}"
        self.results.append(text)
        self.query_one("#result", Static).update(text)

    def _confirm_then(self, question: str, name: str, arg: dict) -> None:
        async def answered(yes: bool | None) -> None:
            if not yes:
                self.show_result(name, {"ok": False, "message": "cancelled"})
                return
            res = await asyncio.to_thread(self.station.action, name, arg)
            self.show_result(name, res)
            await self.refresh_data()
        self.push_screen(Confirm(question), answered)

    def _no_station(self, what: str) -> bool:
        if self.station is None:
            self.show_result(what, {"ok": False, "message": "no station attached (--socket)"})
            return True
        return False

    def action_calibrate(self) -> None:
        if not self._no_station("calibrate"):
            self._confirm_then("Start a calibration (10 s, period 1000 ms, all channels) on the station's board?"
                               " Data recorded meanwhile is flagged 'calibration'.", "calibrate",
                               {"duration_s": 10, "period_ms": 1000})

    def action_resend(self) -> None:
        if self._no_station("resend"):
            return
        ports = (self.last.get("status") or {}).get("ports") or []
        hint = f"{ports[0].get('link', {}).get('packets_ok', '?')} packets received" if ports else "board seq numbers"

        def got(rng: tuple[int, int] | None) -> None:
            if rng is None:
                self.show_result("resend", {"ok": False, "message": "cancelled"})
                return
            self._confirm_then(f"Ask the board to resend packets {rng[0]}..{rng[1]}?", "resend",
                               {"first": rng[0], "last": rng[1]})
        self.push_screen(ResendRange(hint), got)

    def action_next_key(self) -> None:
        if not self._no_station("next_key"):
            self._confirm_then("Re-read the keystore and switch to the next valid signing key?", "next_key", {})


def _event_text(ev: Any) -> str:
    if not isinstance(ev, dict):
        return str(ev)[:60]
    parts = [str(ev.get(k)) for k in ("id", "onset", "time", "peak", "kind") if ev.get(k) is not None]
    return " ".join(parts)[:70] or "event"
