"""Stream workers: Faust agents turn live events into user state and training samples.

See streams.app for the topology and the delivery guarantees, streams.state for what a
user's state and a sample are, streams.views for the read interface."""
