"""Services over the pipeline: chat today; answers, tasks, jobs and more as they land."""
