"""Dual-purpose item identifiers (GenSAR, section 3.1).

Every item gets a semantic embedding (from its text) and a collaborative embedding (from
interactions). An RQ-VAE encodes both into a joint latent; SHARED codebooks quantise it
first, then TASK-SPECIFIC codebooks quantise the semantic and collaborative residuals.
search id = shared codes + semantic codes; recommendation id = shared codes + collaborative
codes. Identifier maps are versioned, immutable, checksummed artifacts; item vectors live
in Qdrant.

Modules, in the order the data flows:
    settings       IdentifierSettings, QdrantSettings (env: GENSAR_IDS__*, GENSAR_QDRANT__*)
    semantic       item text -> MiniLM embeddings, cached on disk by content hash
    collaborative  item2vec (SGNS over user sequences): full fit + incremental updates
    rqvae          the shared/specific residual-quantised VAE
    collisions     unique ids per task: last-level re-assignment, disambiguation level
    artifacts      atomic, checksummed artifact directories (also used by other parts)
    idmap          IdentifierMap: the versioned artifact (the contract other parts use)
    assign         codes for new items without retraining; re-coding drifted items
    build          the bootstrap: dataset + training events -> BuildResult
    vectors        the Qdrant collection (named vectors semantic/collaborative)
    stats          collision rate, utilisation, perplexity, reconstruction, prefix sharing
    cli            `gensar ids build`, `gensar ids stats`
    constraints    the prefix structure for constrained decoding (kept with the model part)
"""
