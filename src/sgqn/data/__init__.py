"""The training data path: env → collector → frame-once replay → the stream of batches the module pulls.

- `datamodule`: `DMCDataModule`, the `--data.*` options, building and checkpointing the parts below.
- `settings`: its options as typed groups (`EnvSettings`, `ReplaySettings`, `UpdateSchedule`).
- `stream`: `EnvStream` (collector → replay → batches), `updates_due`, `StreamStats`.
- `collector_state`: the collector's resume state.
- `replay`: `FrameReplay` and its RAM / disk fit checks; `rows` (row layout, `transitions_to_rows`,
  `StackFrames`), `sampler` (`FrameStackSampler`) and `storage` (`GatherStorage`, `GatherMemmapStorage`).

The images and videos of the test modes and the overlay are `sgqn.assets`.
"""
