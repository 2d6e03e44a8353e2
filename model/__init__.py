"""The GenSAR seq2seq model: one encoder-decoder that generates search identifiers for
queries and recommendation identifiers for histories (GenSAR, section 3.2).

Modules, in the order the data flows:
    vocab      text tokens + one token per (id level, code): the model's vocabulary
    tasks      training samples with task prompts: rec, search, alignment, next query
    modeling   the backbone (a standard Hugging Face PreTrainedModel, PEFT-wrappable)
    train      train_step / train: CPU or CUDA, progress bars, checkpoints, resumable
    generate   batched beam search constrained to valid identifiers
    artifact   save / load with the identifier-map version it was trained against
    recipe     dataset split + identifier map -> trained GenSARModel (used by the CLI and benchmarks)
    cli        `gensar model train`
"""
