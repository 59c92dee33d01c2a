"""The coordinator: routes signed questions to nodes and combines their noisy answers."""
