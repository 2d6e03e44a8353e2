"""The GenSAR model: one decoder-only causal LM that reads a user's events as one sequence
and generates search identifiers for queries and recommendation identifiers for
histories (GenSAR, section 3.2).

Modules, in the order the data flows:
    vocab      text tokens + one token per (id level, code): the model's vocabulary
    tasks      event sequences with task markers: rec, search, next query, alignment
    modeling   the backbone (a Hugging Face causal LM, PEFT-wrappable)
    train      token-packed batches, train_step / train: CPU or CUDA, checkpoints, resumable
    generate   exact scoring of given identifiers; beam search constrained to valid ones
    artifact   save / load with the identifier-map version it was trained against
    recipe     dataset split + identifier map -> trained GenSARModel (used by the CLI and benchmarks)
    cli        `gensar model train`
"""
