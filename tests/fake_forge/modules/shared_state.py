"""The fake Forge's job state (its progress bar and Interrupt button)."""
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
        self.textinfo = None
        self.job = job
        self.time_start = time.time()
        self.history.append(("begin", job))

    def end(self):
        self.history.append(("end", self.job))
        self.job = ""
        self.job_count = 0

    def interrupt(self):
        self.interrupted = True
