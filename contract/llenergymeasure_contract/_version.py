"""The version of every llenergymeasure distribution, and of the host/image contract.

``__version__`` is the one place the release number is typed: the contract, harness and host
distributions all carry it (their pyprojects read this file; a test checks their pins).
``CONTRACT_VERSION`` counts changes to what crosses the host/image boundary (the experiment
config, the result and error records, the environment and file names): bump it when an image
built from the previous version could no longer read the host's config or the host the
image's result. Images carry it in the ``io.llenergymeasure.contract.version`` label and print
it with ``python -m llenergymeasure_harness --version``.
"""

__version__ = "2.0.0"
CONTRACT_VERSION = 6  # 2: strict configs; 3: chat datasets; 4: Timings.phase_windows_s;
# 5: endpoint.completions_logprobs; 6: LoraOutcome.max_adapters_running/_waiting and
# counts_provenance
