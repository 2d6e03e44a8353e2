"""Evaluation: metrics, the paper's and the full-catalogue protocols, baselines, and the
quality benchmark that runs them all on the same test cases.

    metrics     expected HR/NDCG/MRR under random tie-breaking, bootstrap CIs
    protocols   test cases (leave-one-out, temporal; real and semi-synthetic queries), 1+99 candidates
    baselines   BM25, dense (Qdrant), RRF fusion, own earlier targets, popularity, item-kNN
    sasrec      SASRec
    generative  our model as a system (constrained beam search)
    report      tidy result rows and the markdown table
    quality     the budgeted benchmark runner; cli: `gensar bench quality`
"""
