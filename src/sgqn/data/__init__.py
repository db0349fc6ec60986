"""The training data path: env → collector → frame-once replay → the stream of batches the module pulls
(`sgqn.data.stream`, `sgqn.data.replay`). The images and videos of the test modes and the overlay are
`sgqn.assets`."""
