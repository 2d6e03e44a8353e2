"""Starting the real parts locally and in CI: the Kafka broker (KRaft) and its topics."""
