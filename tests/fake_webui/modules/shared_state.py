"""The fake WebUI's job state (what its progress bar and Interrupt button use)."""
import time


class State:
    def __init__(self):
        self.interrupted = False
        self.stopping_generation = False
        self.skipped = False
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.sampling_step = 0
        self.sampling_steps = 0
        self.textinfo = None
        self.time_start = None
        self.history = []  # ("begin", job) / ("end", job), for tests

    def begin(self, job="(unknown)"):
        self.sampling_step = 0
        self.job_count = -1
        self.job_no = 0
        self.interrupted = False
        self.stopping_generation = False
        self.skipped = False
        self.textinfo = None
        self.job = job
        self.time_start = time.time()
        self.history.append(("begin", job))
        from modules import devices

        devices.torch_gc()

    def end(self):
        self.history.append(("end", self.job))
        self.job = ""
        self.job_count = 0
        from modules import devices

        devices.torch_gc()

    def interrupt(self):
        self.interrupted = True

    def stop_generating(self):
        self.stopping_generation = True
