"""The conversation: generate, steer live, attribute, compare and keep sessions, without the view.

The chat screen draws and runs the workers; this controller holds the session, its
answers and the one pending turn, and talks to the runtime (through :mod:`tui.backend`
and :mod:`tui.concepts`) and to the sessions database (:class:`tui.store.Store`). Its
services are passed in: the store when the app starts, a :class:`~tui.records.ModelServices`
when a model is loaded; what it hands back are the typed records of :mod:`tui.records`.

Threads: methods documented "worker thread" block for forward passes and are called from
a thread worker; all the others run on the UI thread. The only state both touch is the
steering sequence number, under a lock: a steering change made while generating builds
its plan in a worker and hands it to the generation unless a newer change came first.

Every answer records which steering was in effect at each denoising step
(:mod:`tui.steering_record`): a steering setting applies for as long as it is on, and the
footer, the saved turn and the exports say which steps and tokens it produced.

Errors a user can cause are :class:`steerling_lite.SteerlingError` (with
:class:`tui.backend.BackendError`) or :class:`tui.store.StoreError`
(:data:`tui.jobs.USER_ERRORS`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from steerling_lite import (
    ChatMessage, Generation, SteeringPlan, Steerling, SteerlingError, StepEvent, build_prompt, require_interpretable,
)

from . import backend
from .backend import BackendError, Sampling
from .concepts import ConceptSpec, attribute_inputs, attribute_span, recorder
from .records import KEEP_ATTRIBUTION, Answer, Generated, ModelServices, PendingTurn, Progress, Saved, SpanRequest
from .steering_record import SteeringTimeline, was_steered
from .store import Attribution, Session, SessionSummary, Store, StoreError, Turn

StepHook = Callable[[StepEvent, int], None]

RUNNING = "a generation is running: esc stops it first"


def turn_prompt(lm: Steerling, prompt: str, history: Sequence[tuple[str, str]] = (), system: str = "") -> list[int]:
    """Token ids for the chat's next turn, built by :func:`steerling_lite.build_prompt`.

    Instruct models: system turn (if any), the earlier (user, assistant) turns of the
    session, then ``prompt`` as the user turn, in the chat template. Base models:
    ``prompt`` as plain completion text.

    Raises:
        BackendError: the prompt is empty.
    """
    if not prompt.strip():
        raise BackendError("the prompt is empty: type some text first")
    msgs = [ChatMessage("system", system)] if system.strip() else []
    for user, assistant in history:
        msgs += [ChatMessage("user", user), ChatMessage("assistant", assistant)]
    return build_prompt(lm.tokenizer, prompt, messages=msgs, chat=lm.config.instruct)


class Conversation:
    """The session on screen and its answers; see the module docstring.

    Args:
        store: the sessions database, or None when it could not be opened (nothing is saved).
        model: the loaded model's services, or None before a model is loaded.

    Attributes:
        step_hook: called on the worker thread after each denoising step with the step's event
            and the tokens committed so far, before the next step runs (tests pause a
            generation at a chosen point with it); None by default.
    """

    def __init__(self, store: Store | None = None, model: ModelServices | None = None) -> None:
        self.store = store
        self.model = model
        self.session = Session(title="", model="")
        self.answers: list[Answer] = []
        self.pending: PendingTurn | None = None
        self.last_tps: float | None = None
        self._steer_seq = 0  # the latest steering change; older plans are dropped
        self._steer_lock = threading.Lock()
        self.step_hook: StepHook | None = None

    # ---- state ---------------------------------------------------------------------------
    @property
    def lm(self) -> Steerling | None:
        return self.model.lm if self.model is not None else None

    @property
    def generation(self) -> Generation | None:
        return self.pending.generation if self.pending is not None else None

    @property
    def model_path(self) -> str:
        lm = self.lm
        return str(lm.path or "") if lm is not None else ""

    def _model(self) -> ModelServices:
        if self.model is None:
            raise BackendError("no model loaded: press ctrl+o to open one")
        return self.model

    def _idle(self) -> None:
        if self.pending is not None:
            raise BackendError(RUNNING)

    # ---- generating ------------------------------------------------------------------------
    def start(self, text: str, form: dict[str, str], system: str, specs: list[ConceptSpec]) -> PendingTurn:
        """Validate the request and prepare the generation of an answer to ``text`` (nothing runs yet).

        Raises:
            BackendError: busy, no model, an empty prompt or a bad setting;
            GenerationError: settings the model cannot use, a prompt over the context.
        """
        if self.pending is not None:
            raise BackendError("a generation is running: esc stops it")
        model = self._model()
        lm = model.lm
        sampling = Sampling.from_form(form)
        sampling.check(lm)
        chat = lm.config.instruct
        history = [(a.turn.prompt, a.turn.output) for a in self.answers] if chat else []
        system = system if chat else ""
        prompt_ids = turn_prompt(lm, text, history, system)
        gen = lm.stream(prompt_ids, sampling.to_config(), capture_hidden=lm.config.interpretable)
        self.pending = PendingTurn(text, prompt_ids, sampling, list(specs), system, self._steer_seq, model, gen)
        return self.pending

    def generate(self, pending: PendingTurn, on_progress: Callable[[Progress], None],
                 cancelled: Callable[[], bool] = lambda: False, min_interval: float = 0.05) -> Generated:
        """Worker thread: run ``pending`` to its end (or until cancelled), recording its attribution
        and calling ``on_progress`` at most every ``min_interval`` seconds and at every finished block."""
        lm, gen = pending.model.lm, pending.generation
        if pending.specs:
            plan = pending.model.steerer.plan(pending.specs)
            with self._steer_lock:
                if pending.steer_seq == self._steer_seq:  # else a live change already set a newer plan
                    pending.plans.append((plan, list(pending.specs)))
                    gen.set_steering(plan)
        rec = recorder(lm, gen, pending.model.catalog)
        timeline = SteeringTimeline()
        mask = lm.config.mask_token_id
        last = 0.0
        n_committed = 0
        for event in gen:
            timeline.add(event.step, in_effect(pending, event.steering, n_committed))
            n_committed += len(event.positions)
            if rec is not None:
                rec.record(event)
            if self.step_hook is not None:
                self.step_hook(event, n_committed)
            if cancelled():
                gen.cancel()
            now = time.monotonic()
            if now - last >= min_interval or mask not in event.block_tokens:
                last = now
                committed = backend.decode(lm, gen.generated_ids(event.block_start))
                on_progress(Progress(committed, backend.block_texts(lm, event.block_tokens)))
        result = gen.result
        assert result is not None
        positions = gen.output_positions()
        P = len(result.prompt_ids)
        segments, token_segments = timeline.finish([result.commit_step[p - P] for p in positions])
        return Generated(result, positions, rec.finish() if rec is not None else None, segments, token_segments)

    def finish(self, pending: PendingTurn, done: Generated, specs_now: list[ConceptSpec]) -> tuple[Answer, Saved]:
        """Keep the answer ``pending`` produced and save it, with the record of which steering
        produced which steps and tokens; ``specs_now``: the steering panel now (the session's)."""
        lm, result = pending.model.lm, done.result
        self.pending = None
        settings: dict[str, Any] = pending.sampling.to_dict()
        segments = done.steering_segments
        if len(segments) > 1:
            settings["steering_changed_while_generating"] = True
        # the steering in effect at the end (the last step's), else what the answer was asked with
        steering = segments[-1]["steering"] if segments else [s.to_dict() for s in pending.specs if s.active]
        tps = result.tokens_per_s if result.elapsed_s > 0 else None
        turn = Turn(
            prompt=pending.prompt, output=result.text, prompt_ids=list(result.prompt_ids),
            token_ids=list(result.token_ids), settings=settings, steering=steering,
            seed=result.seed, stop_reason=result.stop_reason, tokens_per_s=round(tps, 2) if tps is not None else None,
            steering_segments=segments, token_segments=done.token_segments,
        )
        answer = Answer(turn, backend.token_texts(lm, result.token_ids), done.positions, done.attribution)
        self.answers.append(answer)
        for old in self.answers[:-KEEP_ATTRIBUTION]:
            old.attribution = None  # bound the memory: saved attributions stay viewable
        self.last_tps = tps
        self.session.model = str(lm.path or "")
        self.session.system = pending.system
        self.session.settings = pending.sampling.to_dict()
        self.session.steering = [s.to_dict() for s in specs_now]
        if not self.session.title:
            self.session.title = title_of(turn.prompt)
        return answer, self._save_turn(turn)

    def fail(self, pending: PendingTurn) -> None:
        """``pending`` failed: nothing is kept."""
        if self.pending is pending:
            self.pending = None

    def _save_turn(self, turn: Turn) -> Saved:
        def keep() -> None:
            if turn not in self.session.turns:
                self.session.turns.append(turn)

        return self._save(lambda store: store.add_turn(self.session, turn), keep)

    def _save(self, write: Callable[[Store], object], keep: Callable[[], None], ready: bool = True,
              failed: str = "not saved") -> Saved:
        """``write`` the change through the store; ``keep`` it in memory instead when there is no
        store, when what it belongs to is not saved (``ready`` false), or when the write fails."""
        if self.store is None or not ready:
            keep()
            return Saved(False)
        try:
            write(self.store)
        except StoreError as exc:
            keep()
            return Saved(False, f"{failed}: {exc}")
        return Saved(True)

    # ---- live steering ---------------------------------------------------------------------
    def steering_changed(self, specs: list[ConceptSpec]) -> int | None:
        """The steering panel changed: remember it; while generating, the sequence number to
        hand to :meth:`apply_steering` (None when nothing is generating)."""
        self.session.steering = [s.to_dict() for s in specs]
        if self.pending is None:
            return None
        self._steer_seq += 1
        return self._steer_seq

    def apply_steering(self, pending: PendingTurn, specs: list[ConceptSpec], seq: int) -> bool:
        """Worker thread: build the plan for ``specs`` and hand it to the running generation,
        unless a newer change (a higher ``seq``) came first; True when handed over.

        Raises:
            BackendError / ConceptError: the plan cannot be built.
        """
        plan = pending.model.steerer.plan(specs)
        with self._steer_lock:
            if seq != self._steer_seq:
                return False  # a later slider change is being applied
            if plan is not None:
                pending.plans.append((plan, list(specs)))
            pending.generation.set_steering(plan)
        return True

    # ---- compare ---------------------------------------------------------------------------
    def compare_target(self) -> Answer:
        """The last answer, to compare with its unsteered twin (which it may already have).

        Raises:
            BackendError: busy, nothing generated, not steered, no model to regenerate with.
        """
        self._idle()
        if not self.answers:
            raise BackendError("nothing to compare yet: generate an answer with steering first")
        answer = self.answers[-1]
        if answer.turn.unsteered is not None:
            return answer
        if not was_steered(answer.turn.steering_segments, answer.turn.steering):
            raise BackendError("the last answer was not steered: add a concept (f3) and generate, then compare")
        self._model()
        return answer

    def unsteered(self, answer: Answer) -> str:
        """Worker thread: ``answer`` regenerated unsteered with its settings and seed."""
        turn = answer.turn
        sampling = Sampling.from_dict({**turn.settings, "seed": turn.seed})
        return self._model().lm.generate(turn.prompt_ids, sampling.to_config()).text

    def keep_unsteered(self, answer: Answer, text: str) -> Saved:
        """Record the unsteered twin of ``answer`` (saved when the turn is)."""
        turn = answer.turn
        return self._save(lambda store: store.set_unsteered(turn, text), lambda: setattr(turn, "unsteered", text),
                          ready=turn.id is not None)

    # ---- attribution -----------------------------------------------------------------------
    def span_request(self, answer: Answer, start: int, end: int, inputs: bool = False,
                     method: str = "occlusion") -> SpanRequest:
        """What attributing tokens ``start..end`` of ``answer`` takes (input tokens by ``method``:
        ``occlusion`` or ``ig``): the saved attribution, a computation, or why neither is possible."""
        saved = next((a for a in reversed(answer.turn.attributions) if (a.start, a.end) == (start, end)), None)
        reason = ""
        if self.lm is None:
            reason = "no model loaded"
        elif answer.attribution is None:
            try:
                require_interpretable(self.lm.model, "concept attribution", BackendError)
            except BackendError as exc:
                reason = str(exc)
            else:
                reason = (f"only answers generated in this run (the last {KEEP_ATTRIBUTION}) keep their attribution "
                          "data; a reopened session shows its saved attributions: regenerate the answer to attribute "
                          "other tokens")
        return SpanRequest(answer, start, end, inputs, saved, reason, method)

    def attribute(self, req: SpanRequest) -> tuple[dict[str, Any], str]:
        """Worker thread: the attribution data of ``req`` and a note (why the input tokens are
        missing, when they were asked for and could not be computed)."""
        answer = req.answer
        if req.saved is not None:
            data = dict(req.saved.data)
        else:
            data = attribute_span(answer.attribution, answer.positions, req.start, req.end)
        note = ""
        if req.inputs:
            try:
                data["inputs"] = attribute_inputs(self._model().lm, answer.attribution,
                                                  answer.positions[req.start:req.end], method=req.method)
                data["inputs_method"] = req.method
            except SteerlingError as exc:
                note = f"no input attribution: {exc}"
        return data, note

    def keep_attribution(self, req: SpanRequest, data: dict[str, Any]) -> Saved:
        """Keep ``data`` as the attribution of ``req``'s span (replacing the saved one) and save it."""
        turn, saved = req.answer.turn, req.saved
        if saved is not None:
            saved.data = data
            return self._save(lambda store: store.update_attribution(saved), lambda: None,
                              ready=saved.id is not None, failed="attribution not saved")
        a = Attribution(req.start, req.end, data)
        return self._save(lambda store: store.add_attribution(turn, a), lambda: turn.attributions.append(a),
                          ready=turn.id is not None, failed="attribution not saved")

    # ---- sessions --------------------------------------------------------------------------
    def new_session(self, specs: list[ConceptSpec]) -> None:
        """Start an empty session with the steering ``specs``.

        Raises:
            BackendError: a generation is running.
        """
        self._idle()
        self.session = Session(title="", model=self.model_path, steering=[s.to_dict() for s in specs])
        self.answers = []
        self.last_tps = None

    def _store(self) -> Store:
        if self.store is None:
            raise BackendError("sessions are not available: the database could not be opened")
        return self.store

    def history(self) -> list[SessionSummary]:
        """The saved sessions, most recent first.

        Raises:
            BackendError: no database, or a generation is running; StoreError: it cannot be read.
        """
        store = self._store()
        self._idle()
        return store.list_sessions()

    def delete_session(self, session_id: int) -> None:
        self._store().delete_session(session_id)

    def open_session(self, session_id: int) -> Session:
        """Make saved session ``session_id`` the current one, its turns the answers (their tokens
        decoded when a model is loaded; no attribution data: only the saved attributions).

        Raises:
            BackendError: no database, or a generation is running; StoreError: no such session.
        """
        session = self._store().load_session(session_id)
        self.new_session([])
        self.session = session
        lm = self.lm
        for turn in session.turns:
            tokens: list[str] = []
            if lm is not None:
                try:
                    tokens = backend.token_texts(lm, turn.token_ids)
                except Exception:  # a token id this model does not know: show the saved text
                    tokens = []
            self.answers.append(Answer(turn, tokens))
        return session

    def session_sampling(self) -> Sampling:
        """The current session's sampling settings (the defaults where they cannot be read)."""
        try:
            return Sampling.from_dict(self.session.settings)
        except (TypeError, ValueError):
            return Sampling()

    def session_specs(self) -> list[ConceptSpec]:
        return [ConceptSpec.from_dict(d) for d in self.session.steering]

    def made_with_other_model(self) -> bool:
        """The session was made with another model than the loaded one."""
        return self.lm is not None and bool(self.session.model) and self.model_path != self.session.model


def in_effect(pending: PendingTurn, plan: SteeringPlan | None, committed: int) -> list[dict[str, Any]]:
    """The panel concepts (as dicts) that changed a step of ``pending`` run with ``plan`` once
    ``committed`` tokens were committed: on, non-zero, not past a cut-off. A plan the panel did
    not make is named by its specs (``known #id``)."""
    if plan is None:
        return []
    specs = pending.specs_of(plan)
    if specs:
        return [s.to_dict() for s in specs if s.to_steering().in_effect(committed)]
    return [{"concept_id": s.concept_id, "label": f"known #{s.concept_id}",
             "strength": s.value if s.mode != "suppress" else -abs(s.value), "enabled": True}
            for s in plan.in_effect(committed)]


def title_of(prompt: str) -> str:
    """A session's title: the first line of its first prompt, at most 60 characters."""
    line = prompt.strip().splitlines()[0] if prompt.strip() else "untitled"
    return line[:60]
