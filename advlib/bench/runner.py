"""The evaluation loop: a protocol's attacks, batch by batch, on a model.

The run's identity is in `identity`, its files in `storage`, its arrays in
`arrays`, shards and merging in `shards`, and the report's assembly in `report`.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from advlib.bench import diagnostics, ensemble, min_norm
from advlib.bench import probes as probing
from advlib.bench import protocol as protocols
from advlib.bench import report as reports
from advlib.bench.arrays import ATTACK_COSTS, NOT_VERIFIED, VERDICT_CODES, allocate, batch_rows
from advlib.bench.identity import IDENTITY_PROBE, model_identity, run_identity
from advlib.bench.inputs import check_finite_logits, check_model_fits, load_examples
from advlib.bench.shards import parse_shard
from advlib.bench.storage import OutputFolder, restore_state, save_state, write_outputs
from advlib.models.base import Model


class Evaluation:
    """One run of a protocol on a model: its identity, arrays and state files."""

    def __init__(
        self,
        wrapped,
        protocol,
        x,
        y,
        batch_size,
        shard,
        out_dir,
        name,
        variants: dict | None = None,
        transfer_from=None,
        verification: dict | None = None,
    ):
        self.wrapped, self.protocol, self.x, self.y = wrapped, protocol, x, y
        self.verification = verification
        self.batch_size, self.shard, self.out_dir, self.name = batch_size, shard, out_dir, name
        self.variants = variants
        self.attacks = (
            protocol["attacks"]
            if variants is None
            else ensemble.expand(protocol["attacks"], list(variants))
        )
        self.names = [entry["name"] for entry in self.attacks]
        self.eps_list = protocols.eps_values(protocol)
        self.batches = -(-len(x) // batch_size)
        if shard is not None and shard[0] > self.batches:
            raise ValueError(
                f"shard {shard[0]}/{shard[1]} has no batches: {len(x)} examples "
                f"in batches of {batch_size} make {self.batches} batches, so at "
                f"most {self.batches} shards have work."
            )
        probe = x[: min(len(x), IDENTITY_PROBE)]
        self.model_parts = model_identity(wrapped, probe)
        self.identity = run_identity(
            protocols.protocol_hash(protocol),
            self.model_parts["fingerprint"],
            x,
            y,
            batch_size,
            shard,
            variants,
            None if transfer_from is None else model_identity(transfer_from, probe)["fingerprint"],
            verification,
        )
        self.mine = [
            b for b in range(self.batches) if shard is None or b % shard[1] == shard[0] - 1
        ]
        self.certify = protocol.get("certify")
        min_norm_entries = (protocol.get("min_norm") or {}).get("attacks")
        self.arrays = allocate(
            y,
            len(self.eps_list),
            len(self.names),
            self.batches,
            verification=verification is not None,
            certify=self.certify is not None,
            min_norm_count=None if min_norm_entries is None else len(min_norm_entries),
        )
        if verification is not None:
            from advlib.qnn.verify import NetworkEncoding

            self.encoding = NetworkEncoding(wrapped.engine)
        if self.certify is not None:
            from advlib.certify import SmoothedClassifier

            self.smoothed = SmoothedClassifier(
                wrapped, self.certify["sigma"], self.certify["batch_size"]
            )
        self.done: list[int] = []
        self.probes: dict | None = None
        self.instances: dict = {}  # attack objects, reused across batches and eps

    # -- state ----------------------------------------------------------------
    def restore(self) -> None:
        """Continues from the state saved in the output folder (`storage.restore_state`)."""
        self.arrays, self.done, self.probes = restore_state(
            self.out_dir, self.identity, self.arrays, self.mine
        )

    def save(self) -> None:
        """Saves the state after a finished batch or the diagnostics."""
        save_state(self.out_dir, self.identity, self.done, self.probes, self.arrays)

    # -- the loop ----------------------------------------------------------------
    def run_batch(self, b: int, on_attack=None) -> None:
        start, stop = b * self.batch_size, min((b + 1) * self.batch_size, len(self.x))
        x, y = self.x[start:stop], self.y[start:stop]
        predicted = check_finite_logits(self.wrapped, x, start).argmax(axis=1)
        self.arrays["clean_pred"][start:stop] = predicted
        self.arrays["correct"][start:stop] = predicted == y
        seed = int(self.protocol["seed"])
        for e, eps in enumerate(self.eps_list):
            hook = None if on_attack is None else (lambda name, eps=eps: on_attack(name, eps))
            runs = protocols.runs_at(self.protocol, e, self.names)
            out = ensemble.run_ensemble(
                self.wrapped,
                self.protocol,
                x,
                y,
                eps,
                seed=ensemble.batch_seed(seed, b, e),
                on_attack=hook,
                attacks=self.attacks,
                variants=self.variants,
                instances=self.instances,
                skip=[not run for run in runs],
            )
            if self.verification is not None:
                self._verify(x, y, eps, out, predicted == y, start)
            self.arrays["broken_by"][e, start:stop] = out["broken_by"]
            self.arrays["norm"][e, start:stop] = out["norm"]
            self.arrays["attacked"][e, :, start:stop] = out["attacked"]
            self.arrays["success"][e, :, start:stop] = out["success"]
            for key in ATTACK_COSTS:
                self.arrays[key][b, e] = out[key]
            if self.verification is not None:
                self.arrays["verdict"][e, start:stop] = out["verdict"]
                self.arrays["verify_seconds"][e, start:stop] = out["verify_seconds"]
        if self.certify is not None:
            self._certify(b, x, start, stop)
        if self.protocol.get("min_norm") is not None:
            out = min_norm.run(
                self.wrapped,
                self.protocol,
                x,
                y,
                ensemble.batch_seed(seed, b, len(self.eps_list)),
                self.instances,
            )
            self.arrays["min_norm"][:, start:stop] = out["norms"]
            self.arrays["min_norm_seconds"][b] = out["seconds"]
        self.done.append(b)

    def _certify(self, b, x, start, stop) -> None:
        """Randomized smoothing of the model on the batch; its seed follows the
        batch's attack seeds, at the eps index after the last."""
        settings = self.certify
        seed = ensemble.batch_seed(int(self.protocol["seed"]), b, len(self.eps_list))
        result = self.smoothed.certify(
            x, n0=settings["n0"], n=settings["n"], alpha=settings["alpha"], seed=seed
        )
        self.arrays["smoothed_pred"][start:stop] = result.prediction
        self.arrays["certified_radius"][start:stop] = result.radius
        self.arrays["certify_seconds"][b] = result.seconds

    def _verify(self, x, y, eps, out, correct, start: int) -> None:
        """The exact verifier on the examples every attack left; its counterexamples
        join the worst case as breaks by the pseudo-attack `len(names)`. Each
        example's search draws the seed it draws in `verify()` on the whole set
        (`start` is the batch's first index)."""
        from advlib.attacks.utils import within_threat
        from advlib.qnn.verify import verify

        assert self.verification is not None  # _verify runs only with --verify
        out["verdict"] = np.full(len(x), NOT_VERIFIED, np.int8)
        out["verify_seconds"] = np.zeros(len(x))
        rows = np.flatnonzero(correct & (out["broken_by"] < 0))
        if rows.size == 0:
            return
        result = verify(
            self.encoding,
            x[rows],
            y[rows],
            eps,
            progress=False,
            example_ids=start + rows,
            **self.verification,
        )
        clip = self.protocol["clip"]
        for row, verdict in zip(rows, result.verdicts):
            status = verdict.status
            if status == "broken":
                assert verdict.counterexample is not None  # every "broken" verdict has one
                adversarial = verdict.counterexample[None].astype(x.dtype)
                inside, norm = within_threat(
                    adversarial,
                    x[row : row + 1],
                    eps,
                    self.protocol["threat"]["norm"],
                    clip["min"],
                    clip["max"],
                )
                if inside[0]:
                    out["broken_by"][row] = len(self.names)
                    out["norm"][row] = norm[0]
                else:  # never for a sound verifier; it would not be a proof either way
                    status = "unknown"
            out["verdict"][row] = VERDICT_CODES[status]
            out["verify_seconds"][row] = verdict.seconds

    def run_probes(self, transfer_from=None, on_step=None) -> None:
        """The diagnostics' own attacks, on the protocol's first examples; with
        --adaptive they attack through the first adaptive variant."""
        n = min(diagnostics.settings(self.protocol)["n"], len(self.x))
        check_finite_logits(self.wrapped, self.x[:n])
        attacked = next(iter(self.variants.values())) if self.variants else self.wrapped
        self.probes = probing.probe(
            attacked,
            self.wrapped,
            self.protocol,
            self.x[:n],
            self.y[:n],
            seed=int(self.protocol["seed"]),
            surrogate=transfer_from,
            on_step=on_step,
            instances=self.instances,
        )

    def selection(self) -> np.ndarray:
        """The examples of the finished batches."""
        return batch_rows(self.done, self.batch_size, len(self.x))


def evaluate(
    model: keras.Model | Model,
    protocol: str | dict = "digits-linf-0.2",
    out_dir: str | None = None,
    resume: bool = False,
    shard: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    model_name: str | None = None,
    adaptive: bool = False,
    transfer_from: keras.Model | Model | None = None,
    overwrite: bool = False,
    verify: bool = False,
    verify_time_limit: float = 30.0,
    verify_backend: str = "milp",
    verify_search_share: float = 0.5,
) -> dict:
    """Evaluates a live model under a protocol; returns the report.

    Args:
        model: a Keras model or an `advlib.models.Model` (a `QNNModelWrapper`
            with an engine judges predictions by exact binary inference).
        protocol: a shipped protocol's name, a JSON file, or a dict.
        out_dir: where the state (after every batch) and the report go. None
            keeps everything in memory.
        resume: continue the run saved in `out_dir`.
        shard: "i/n" evaluates every n-th batch from the i-th (1-based).
        batch_size: overrides the protocol's (part of the run's identity).
        progress: show a progress bar.
        model_name: the name in the report (default: the Keras model's).
        adaptive: also attack through adaptive variants of the model (sign
            surrogates for QNNs, BPDA through layers with zero gradients; see
            `advlib.bench.adaptive`). The worst case over all attacks is reported.
        transfer_from: a surrogate model (e.g. a QNN's float twin) for the
            transfer diagnostic.
        overwrite: write into an `out_dir` that holds other files (never
            needed for a new or empty folder). The folder is locked for the
            run's lifetime, so a second run into it is refused.
        verify: for a binary network with an exported engine
            (`QNNModelWrapper(model, engine=...)`), run the exact verifier
            (`advlib.qnn.verify`) at every eps on the examples every attack
            left: the report gives the certified interval [proved robust, not
            broken], the attack-completeness check, and the verifier's
            counterexamples join the worst case. L-inf protocols only.
        verify_time_limit: seconds per example; past it the example is unknown.
        verify_backend: "milp" (SciPy's HiGHS) or "sat" (PySAT; see
            `advlib.qnn.verify.verify` for which decides what faster).
        verify_search_share: the share of each example's time for the local
            search for counterexamples (`advlib.qnn.verify.verify`'s
            `search_share`): 0.9 where the complete backend decides nothing in
            time, as on binary CNNs with thousands of open units.

    Returns:
        The report (see `advlib.bench.report`), as also written to out_dir.
    """
    from advlib import _checks
    from advlib.models.keras import as_model

    protocol = protocols.load(protocol)
    shard_spec = parse_shard(shard)
    _checks.check_number("batch_size", batch_size, low=1, integer=True, allow_none=True)
    wrapped = as_model(model)
    transfer = None if transfer_from is None else as_model(transfer_from)
    x, y = load_examples(protocol)
    check_model_fits(wrapped, x, y, protocol)
    size = protocol["batch_size"] if batch_size is None else int(batch_size)
    verification = _verification_settings(
        wrapped, protocol, verify, verify_time_limit, verify_backend, verify_search_share
    )
    variants = None
    if adaptive:
        from advlib.bench.adaptive import variants as adaptive_variants

        variants = adaptive_variants(wrapped, x[: min(len(x), 64)])
    evaluation = Evaluation(
        wrapped,
        protocol,
        x,
        y,
        size,
        shard_spec,
        out_dir,
        model_name,
        variants,
        transfer,
        verification,
    )
    if out_dir is None:
        return _evaluate(evaluation, progress, transfer, model_name, model)
    with OutputFolder(out_dir, resume=resume, overwrite=overwrite):
        if resume:
            evaluation.restore()
        return _evaluate(evaluation, progress, transfer, model_name, model)


def _verification_settings(
    wrapped, protocol, verify, time_limit, backend, search_share
) -> dict | None:
    """The verifier's settings of a run (None without --verify), checked up front."""
    from advlib import _checks
    from advlib.qnn.verify import require_backend

    if not verify:
        return None
    if getattr(wrapped, "engine", None) is None:
        raise ValueError(
            "verify=True needs a binary network with an exported engine: pass "
            "QNNModelWrapper(model, engine='model.npz') (--engine on the command "
            f"line); got a {type(wrapped).__name__} without one."
        )
    if protocol["threat"]["norm"] != "inf":
        raise ValueError(
            f"verify=True decides L-inf balls; protocol {protocol['name']!r} uses "
            f"the L{protocol['threat']['norm']} norm."
        )
    _checks.check_number("verify_time_limit", time_limit, low=0, low_open=True)
    require_backend(backend, "verify_backend")
    _checks.check_number("verify_search_share", search_share, low=0, high=1, high_open=True)
    return {
        "backend": backend,
        "time_limit": float(time_limit),
        "search_share": float(search_share),
    }


def _evaluate(evaluation: Evaluation, progress: bool, transfer, model_name, model) -> dict:
    out_dir, size, x = evaluation.out_dir, evaluation.batch_size, evaluation.x
    todo = [b for b in evaluation.mine if b not in evaluation.done]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(min(size, len(x) - b * size) for b in evaluation.mine)
        bar = tqdm(
            total=total,
            initial=total - sum(min(size, len(x) - b * size) for b in todo),
            desc=evaluation.protocol["name"],
            unit="ex",
            dynamic_ncols=True,
        )
    on_attack = (
        None if bar is None else lambda name, eps: bar.set_postfix_str(f"{name} @ eps={eps:.4g}")
    )
    start = time.perf_counter()
    if evaluation.probes is None:
        step = None if bar is None else lambda name: bar.set_postfix_str(f"diagnostics: {name}")
        evaluation.run_probes(transfer, step)
        if out_dir is not None:
            evaluation.save()
    for b in todo:
        evaluation.run_batch(b, on_attack)
        if out_dir is not None:
            evaluation.save()
        if bar is not None:
            bar.update(min(size, len(x) - b * size))
    if bar is not None:
        bar.close()
    wrapped = evaluation.wrapped
    name = model_name or getattr(getattr(wrapped, "model", None), "name", type(model).__name__)
    report = reports.build_report(evaluation, name)
    report["wall_seconds_this_session"] = time.perf_counter() - start
    if out_dir is not None:
        write_outputs(report, evaluation.arrays, out_dir)
    return report
