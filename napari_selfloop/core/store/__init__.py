"""What is kept on disk and handed over: checkpoints and their model cards, the bundled
models, autosave (and its dirty tiles), exports, the project folder and batch tasks."""
