"""`gensar demo`: the whole system on one machine, end to end.

    bootstrap  the first part of the data (by time): identifier map + base model
    stack      Kafka broker, Ray, the stream worker, the learner, the Serve app
    replay     the rest as a live stream at an accelerated clock; before each sampled
               event is produced, the live endpoint and a frozen bootstrap copy predict it
               (prequential evaluation)
    report     summary table (live vs frozen, freshness) + markdown and plots

Everything lives under one state directory, so a second run resumes where the first stopped.
"""
