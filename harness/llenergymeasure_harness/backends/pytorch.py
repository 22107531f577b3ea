"""The transformers (PyTorch) backend: ``model.generate`` in fixed batches.

Loads from the hub, a local path, or ``load_format: dummy`` (random weights from the
architecture's ``config.json`` built directly on the device in the target dtype: Llama-3.1-8B
builds in about 1 s on an H100, no download). Seeds Python, NumPy and torch. Runs on CPU when
no CUDA device is present (the tiny dummy Llama is what CI uses).

Per-token timestamps come from :class:`StepTimestamper`, a ``StoppingCriteria`` that generate
calls once per step (the first call is the first token, after prefill). On CUDA it records a
CUDA event per step and converts all of them to the ``perf_counter`` clock once, after the batch
(one ``elapsed_time`` per event against an anchor event synchronised with ``perf_counter``), so
it adds no synchronisation to the loop; on CPU it reads ``perf_counter`` directly. It also
stops each row at its own ``max_new_tokens`` when a batch's requests differ in length; the
batch still runs until its longest row ends, and ``last_static_batch`` counts the slots
(rows x steps) against the tokens asked for: the waste of static batching under mixed lengths.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.sections import PyTorchConfig
from llenergymeasure_harness.backends.base import (
    GenerationRequest,
    LoadInfo,
    RequestRecord,
    release_device_memory,
    token_ids_digest,
)
from llenergymeasure_harness.backends.pytorch_eval import PyTorchEvaluationMethods
from llenergymeasure_harness.lora import AdapterSet, FixedProbe, LoraCounts, prepare_adapters
from llenergymeasure_harness.traffic import ArrivalPlan, ArrivalQueue

logger = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


class StepTimestamper:
    """Stopping criterion that timestamps each generate step and stops each row at its length.

    Args:
        device: The torch device generate runs on (CUDA: events; otherwise perf_counter).
        expected_steps: Steps to pre-create CUDA events for.
        prompt_width: Columns of the (padded) prompt, so ``input_ids.shape[1] - prompt_width``
            tokens have been generated when the criterion is called.
        row_limits: Each row's own ``max_new_tokens``; None (or all equal) never stops a row
            (``max_new_tokens`` ends the batch). A row that reaches its limit is marked done,
            and transformers pads it from then on while the batch's longest row runs: the idle
            slots static batching costs (counted by the backend).
    """

    def __init__(
        self,
        device: Any = None,
        expected_steps: int = 0,
        *,
        prompt_width: int = 0,
        row_limits: Sequence[int] | None = None,
    ) -> None:
        import torch

        self._torch = torch
        self.use_events = device is not None and getattr(device, "type", str(device)) == "cuda"
        self._events: list[Any] = []
        # Events are created before generate starts, so a step only records one (measured on
        # the H100: creating an event per step cost ~0.1 % of batch-64 decode throughput).
        self._pool: list[Any] = (
            [torch.cuda.Event(enable_timing=True) for _ in range(expected_steps)]
            if self.use_events
            else []
        )
        self.step_times_s: list[float] = []
        self._false: Any = None
        self._width = prompt_width
        self._limits: Any = None
        if row_limits is not None and len(set(row_limits)) > 1:
            self._limits = torch.tensor(list(row_limits), dtype=torch.long, device=device)

    def __call__(self, input_ids: Any, scores: Any = None, **kwargs: Any) -> Any:
        if self.use_events:
            n = len(self._events)
            ev = (
                self._pool[n] if n < len(self._pool) else self._torch.cuda.Event(enable_timing=True)
            )
            ev.record()
            self._events.append(ev)
        else:
            self.step_times_s.append(time.perf_counter())
        if self._limits is not None:
            return self._limits <= (input_ids.shape[1] - self._width)
        n = input_ids.shape[0]
        if self._false is None or self._false.shape[0] != n:
            self._false = self._torch.zeros(n, dtype=self._torch.bool, device=input_ids.device)
        return self._false

    def finish(self) -> list[float]:
        """Synchronise once and return every step's time on the perf_counter clock."""
        if self.use_events and self._events:
            anchor = self._torch.cuda.Event(enable_timing=True)
            anchor.record()
            anchor.synchronize()
            t = time.perf_counter()
            self.step_times_s = [t - ev.elapsed_time(anchor) / 1000.0 for ev in self._events]
            self._events = []
        return self.step_times_s


def _criteria(stamper: StepTimestamper) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Crit(StoppingCriteria):  # type: ignore[misc]  # transformers is untyped here
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return stamper(input_ids, scores)

    return StoppingCriteriaList([_Crit()])


def _sleep_until(deadline: float) -> None:
    """Sleep (no spinning) until ``deadline`` on the perf_counter clock."""
    delay = deadline - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class PyTorchBackend(PyTorchEvaluationMethods):
    """transformers ``generate`` behind the :class:`~.base.Backend` protocol."""

    name = "pytorch"

    def __init__(self) -> None:
        self.model: Any = None
        self.config: ExperimentConfig | None = None
        self.section: PyTorchConfig = PyTorchConfig()
        self.device: Any = None
        self.devices: list[int] = []
        self.pad_id = 0
        self.eos_ids: set[int] = set()
        self.gen_config: Any = None
        # Slot accounting of the last run(): rows x decode steps vs tokens asked for.
        self.last_static_batch: dict[str, int] | None = None
        self.adapters = AdapterSet()
        self.lora_probe: FixedProbe | None = None

    # ----------------------------------------------------------------- load

    @property
    def warmup_unit(self) -> int:
        return self.section.batch_size

    def _dtype(self, config: ExperimentConfig, cuda: bool) -> Any:
        import torch

        if config.precision == "auto":
            if cuda and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return torch.float32 if not cuda else torch.float16
        return getattr(torch, _DTYPES[config.precision])

    def load(self, config: ExperimentConfig) -> LoadInfo:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM

        t0 = time.perf_counter()
        self.config = config
        assert isinstance(config.pytorch, PyTorchConfig)
        self.section = sec = config.pytorch
        seed_everything(config.random_seed)
        cuda = torch.cuda.is_available() and bool(config.gpus)  # gpus: [] means the CPU
        self.devices = list(config.gpus) if cuda else []
        self.device = torch.device(f"cuda:{config.gpus[0]}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        dtype = self._dtype(config, cuda)
        if sec.quantization and not cuda:
            raise ConfigError("pytorch.quantization (bitsandbytes) needs a CUDA GPU")
        common: dict[str, Any] = {
            "attn_implementation": sec.attn_implementation,
            "trust_remote_code": config.trust_remote_code,
        }
        common.update(sec.model_kwargs)
        if config.load_format == "dummy":
            if sec.quantization:
                raise ConfigError(
                    "pytorch.quantization needs real weights; load_format: dummy builds "
                    "unquantised random weights",
                    hint="use load_format: auto with a hub id or local checkpoint",
                )
            hf_config = self._dummy_config(config, AutoConfig)
            self.model = self._build_dummy(hf_config, dtype, common, AutoModelForCausalLM)
        else:
            self.model = self._from_pretrained(config, dtype, common, AutoModelForCausalLM)
        if config.lora is not None:
            self._load_adapters(config)
        self.model.eval()
        if sec.torch_compile:
            self.model.forward = torch.compile(self.model.forward, mode=sec.compile_mode)
        mc = self.model.config
        gc = copy.deepcopy(self.model.generation_config)
        eos = gc.eos_token_id if gc.eos_token_id is not None else mc.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad = gc.pad_token_id if gc.pad_token_id is not None else getattr(mc, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)
        self.gen_config = self._generation_config(gc, config)
        if cuda:
            for d in self.devices:
                torch.cuda.reset_peak_memory_stats(d)
            torch.cuda.synchronize()
        n_params = sum(p.numel() for p in self.model.parameters())
        return LoadInfo(
            backend_version=transformers.__version__,
            backend_library="transformers",
            parameter_count=int(n_params),
            dtype=str(dtype).replace("torch.", ""),
            load_duration_s=time.perf_counter() - t0,
            devices=self.devices,
            extra={
                "torch": torch.__version__,
                "device": str(self.device),
                "vocab_size": int(getattr(mc, "vocab_size", 0) or 0) or None,
                "hf_config": mc.to_dict(),
                "attn_implementation": sec.attn_implementation,
                "lora": [a.name for a in self.adapters.adapters] or None,
            },
        )

    def _load_adapters(self, config: ExperimentConfig) -> None:
        """Every adapter of ``lora:`` onto the model with peft, all resident (no swapping).

        ``PeftModel.from_pretrained`` wraps the model with the first, ``load_adapter`` adds the
        others under their names; a batch then names each row's adapter (``adapter_names``).
        """
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise ConfigError(
                "lora: with backend pytorch needs peft, which is not installed here",
                hint="use the llenergymeasure pytorch image, or pip install peft",
            ) from exc
        self.adapters = prepare_adapters(config)
        first, *rest = self.adapters.adapters
        self.model = PeftModel.from_pretrained(
            self.model, first.path, adapter_name=first.name, is_trainable=False
        )
        for adapter in rest:
            self.model.load_adapter(adapter.path, adapter_name=adapter.name, is_trainable=False)
        # peft puts each adapter's weights on the device of the layer it adapts (no .to(): a
        # model dispatched over several GPUs keeps its placement).
        # peft holds every adapter on the model at once: loaded once each, never swapped.
        self.lora_probe = FixedProbe(
            LoraCounts.unreported(
                "peft has no scheduler that reports adapters in flight (the harness batches the "
                "requests; a batch mixes adapters through adapter_names)",
                adapter_loads=(
                    len(self.adapters.adapters),
                    "peft: each adapter loaded onto the model once, at load (outside the "
                    "measured window)",
                ),
                adapter_swaps=(0, "peft keeps every adapter on the model; none is unloaded"),
            )
        )

    def rebind(self, config: ExperimentConfig) -> None:
        """Take another experiment's run-time settings on the loaded model (engine reuse).

        Only the registry's ``run_time_keys`` may differ from the loaded config (batch size,
        decoder, lengths, traffic); the generation config is rebuilt from the model's own,
        the seed set again and the peak-memory counters reset, as after a load.
        """
        assert isinstance(config.pytorch, PyTorchConfig)
        self.config = config
        self.section = config.pytorch
        seed_everything(config.random_seed)
        self.gen_config = self._generation_config(
            copy.deepcopy(self.model.generation_config), config
        )
        if self.devices:
            import torch

            for d in self.devices:
                torch.cuda.reset_peak_memory_stats(d)

    @staticmethod
    def _dummy_config(config: ExperimentConfig, auto_config: Any) -> Any:
        from llenergymeasure_contract.architecture import resolve_architecture

        arch = resolve_architecture(config.model)
        if arch is not None:
            cfg = dict(arch.hf_config)
            model_type = cfg.pop("model_type", None)
            if model_type is None:
                raise ConfigError(f"architecture {arch.name} has no model_type")
            cfg.pop("torch_dtype", None)
            cfg.pop("dtype", None)
            return auto_config.for_model(model_type, **cfg)
        # Not built in: only the config.json is fetched (no weights).
        return auto_config.from_pretrained(
            config.model, revision=config.revision, trust_remote_code=config.trust_remote_code
        )

    def _build_dummy(self, hf_config: Any, dtype: Any, common: dict[str, Any], auto: Any) -> Any:
        import torch

        def build(device: Any) -> Any:
            with torch.device(device):
                try:
                    return auto.from_config(hf_config, dtype=dtype, **common)
                except TypeError:  # transformers < 4.56 spells it torch_dtype
                    return auto.from_config(hf_config, torch_dtype=dtype, **common)

        if self.section.device_map is None or len(self.devices) < 2:
            return build(self.device)
        # Multi-GPU dummy: shape on the meta device, place with accelerate, then materialise
        # each tensor with random values directly on its GPU.
        from accelerate import dispatch_model, infer_auto_device_map
        from accelerate.utils import set_module_tensor_to_device

        model = build("meta")
        free = {d: torch.cuda.mem_get_info(d)[0] * 0.9 for d in self.devices}
        dmap = infer_auto_device_map(
            model,
            max_memory=free,
            no_split_module_classes=getattr(model, "_no_split_modules", None),
            dtype=dtype,
        )
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            dev = next(
                (v for k, v in dmap.items() if name == k or name.startswith(k + ".") or k == ""),
                self.devices[0],
            )
            value = torch.empty(tensor.shape, dtype=tensor.dtype, device=dev)
            if value.is_floating_point():
                value.normal_(0.0, 0.02)
            else:
                value.zero_()
            set_module_tensor_to_device(model, name, dev, value=value)
        return dispatch_model(model, device_map=dmap)

    def _from_pretrained(
        self, config: ExperimentConfig, dtype: Any, common: dict[str, Any], auto: Any
    ) -> Any:
        import torch

        sec = self.section
        kwargs: dict[str, Any] = dict(common)
        kwargs["revision"] = config.revision
        if sec.quantization:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_8bit=sec.quantization == "bnb_8bit",
                load_in_4bit=sec.quantization == "bnb_4bit",
                bnb_4bit_quant_type=sec.bnb_4bit_quant_type,
                bnb_4bit_compute_dtype=dtype,
            )
        if sec.device_map is not None and len(self.devices) > 1:
            kwargs["device_map"] = sec.device_map
            kwargs["max_memory"] = {
                d: int(torch.cuda.mem_get_info(d)[0] * 0.9) for d in self.devices
            }
        else:
            kwargs["device_map"] = {"": self.device}
        try:
            return auto.from_pretrained(config.model, dtype=dtype, **kwargs)
        except TypeError:
            return auto.from_pretrained(config.model, torch_dtype=dtype, **kwargs)

    def _generation_config(self, gc: Any, config: ExperimentConfig) -> Any:
        dec = config.decoder
        gc.do_sample = dec.do_sample
        if dec.do_sample:
            gc.temperature = dec.temperature
            gc.top_p = dec.top_p
            gc.top_k = dec.top_k if dec.top_k > 0 else None
        else:  # greedy: unset sampling knobs so transformers does not warn about them
            gc.temperature = None
            gc.top_p = None
            gc.top_k = None
        gc.repetition_penalty = dec.repetition_penalty if dec.repetition_penalty != 1.0 else None
        gc.pad_token_id = self.pad_id
        gc.num_beams = 1
        if self.section.static_kv_cache:
            gc.cache_implementation = "static"
        return gc

    # ----------------------------------------------------------------- run

    def run(
        self, requests: Sequence[GenerationRequest], plan: ArrivalPlan | None = None
    ) -> list[RequestRecord]:
        self.last_static_batch = {"tokens_generated": 0, "tokens_requested": 0}
        if plan is not None and not plan.is_offline:
            return self._run_arrivals(requests, plan)
        bs = self.section.batch_size
        records: list[RequestRecord] = []
        for i in range(0, len(requests), bs):
            records.extend(self._run_batch(requests[i : i + bs]))
        return records

    def _run_arrivals(
        self, requests: Sequence[GenerationRequest], plan: ArrivalPlan
    ) -> list[RequestRecord]:
        """A dynamic batcher over ``generate``, driven by the arrival plan.

        A batch opens when its first request is due and closes when it holds ``batch_size``
        due requests or its first request has waited ``traffic.max_wait_s``, whichever comes
        first; requests that arrive while ``generate`` runs wait for the next batch (static
        batching cannot admit them mid-batch, and that cost is what this measures)::

            arrivals   ●   ●●        ●    ●●●●       ●
            batches    [=====gen=====][====gen====][==gen==]
                       ↑ opens at the first arrival; closes at batch_size or max_wait_s

        The harness sleeps until each due time; it never spins.
        """
        bs = self.section.batch_size
        queue: ArrivalQueue[GenerationRequest] = ArrivalQueue(
            list(requests), plan, time.perf_counter()
        )
        by_id: dict[int, RequestRecord] = {}
        while queue.pending:
            first_due = queue.next_due_s()
            if first_due is None:  # cannot happen: a closed loop completes synchronously
                raise RuntimeError("closed-loop batcher has nothing due and nothing running")
            close_at = first_due + plan.max_wait_s
            full_at = queue.due_s_of_nth(bs - 1)
            if full_at is not None:
                close_at = min(close_at, full_at)
            _sleep_until(max(first_due, close_at))
            batch = queue.pop_due(time.perf_counter(), limit=bs)
            for record, (_, arrival) in zip(
                self._run_batch([r for r, _ in batch]), batch, strict=True
            ):
                record.arrival_s = arrival
                by_id[record.request_id] = record
            queue.completed(len(batch), time.perf_counter())
        return [by_id[r.request_id] for r in requests]

    def _run_batch(self, reqs: Sequence[GenerationRequest]) -> list[RequestRecord]:
        import torch

        assert self.config is not None
        width = max(len(r.prompt_token_ids) for r in reqs)
        # Left padding: decoder-only models continue from the last real token.
        ids = [[self.pad_id] * (width - len(r.prompt_token_ids)) + r.prompt_token_ids for r in reqs]
        mask = [
            [0] * (width - len(r.prompt_token_ids)) + [1] * len(r.prompt_token_ids) for r in reqs
        ]
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        attention = torch.tensor(mask, dtype=torch.long, device=self.device)
        max_new = max(r.max_new_tokens for r in reqs)
        gc = copy.copy(self.gen_config)
        gc.max_new_tokens = max_new
        gc.min_new_tokens = max_new if self.config.ignore_eos else None
        kwargs: dict[str, Any] = dict(self.section.generate_kwargs)
        if self.adapters.adapters:
            # peft's mixed-adapter batch: every LoRA layer runs each adapter's rows as their
            # own sub-batch; "__base__" rows skip the adapters.
            kwargs["adapter_names"] = [r.adapter or "__base__" for r in reqs]
        stamper = StepTimestamper(
            self.device,
            expected_steps=max_new,
            prompt_width=width,
            row_limits=[r.max_new_tokens for r in reqs],
        )
        submit = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=gc,
                stopping_criteria=_criteria(stamper),
                **kwargs,
            )
        times = stamper.finish()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        end = time.perf_counter()
        generated = out[:, width:].tolist()
        if self.last_static_batch is not None:
            # Every row holds its slot for every step the batch ran, done or not.
            self.last_static_batch["tokens_generated"] += len(reqs) * (out.shape[1] - width)
            self.last_static_batch["tokens_requested"] += sum(r.max_new_tokens for r in reqs)
        records: list[RequestRecord] = []
        for r, toks in zip(reqs, generated, strict=True):
            n = min(len(toks), r.max_new_tokens)
            reason = "length"
            if not self.config.ignore_eos:
                for k, t in enumerate(toks[:n]):
                    if t in self.eos_ids:
                        n, reason = k + 1, "stop"  # EOS counts; padding after it does not
                        break
            tt = times[:n]
            records.append(
                RequestRecord(
                    request_id=r.request_id,
                    input_tokens=len(r.prompt_token_ids),
                    output_tokens=n,
                    submit_s=submit,
                    end_s=tt[-1] if tt else end,
                    first_token_s=tt[0] if tt else None,
                    token_times_s=tt,
                    finish_reason=reason,
                    output_sha256=token_ids_digest(toks[:n]),
                )
            )
        return records

    def peak_memory_bytes(self) -> dict[int, int] | None:
        if not self.devices:
            return None
        import torch

        return {d: int(torch.cuda.max_memory_allocated(d)) for d in self.devices}

    def close(self) -> None:
        self.adapters.close()
        if self.model is None:
            return
        self.model = None
        release_device_memory()

    def sync(self) -> None:
        """Wait for the device (window edges)."""
        if self.devices:
            import torch

            for d in self.devices:
                torch.cuda.synchronize(d)
