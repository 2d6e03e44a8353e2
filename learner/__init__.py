"""The learner: keeps the model fresh from the training-samples stream.

    registry   versioned adapters with manifests and checksums, decisions, announcements
"""
