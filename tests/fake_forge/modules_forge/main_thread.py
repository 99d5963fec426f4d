"""Forge's main-thread task loop (``modules_forge/main_thread.py``), re-written for tests.

Forge runs ``loop()`` in the process's main thread; UI handlers queue work with
``async_run`` / ``run_and_wait_result`` and poll ``finished_list``. As in Forge,
``Task.work`` catches ``Exception`` only (kept in ``last_exception``), so a
``BaseException`` raised by a task ends the loop. Tests run the loop in a thread
of their own (:func:`start`) and end it with :func:`stop`.
"""
import threading
import time

lock = threading.Lock()
last_id = 0
waiting_list = []
finished_list = []
last_exception = None
_stop = threading.Event()


class Task:
    def __init__(self, task_id, func, args, kwargs):
        self.task_id = task_id
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.result = None
        self.exception = None

    def work(self):
        global last_exception
        try:
            self.result = self.func(*self.args, **self.kwargs)
            self.exception = None
            last_exception = None
        except Exception as e:
            self.exception = e
            last_exception = e


def loop():
    while not _stop.is_set():
        time.sleep(0.01)
        if waiting_list:
            with lock:
                task = waiting_list.pop(0)
            task.work()
            with lock:
                finished_list.append(task)


def async_run(func, *args, **kwargs):
    global last_id
    with lock:
        last_id += 1
        waiting_list.append(Task(last_id, func, args, kwargs))
        return last_id


def run_and_wait_result(func, *args, **kwargs):
    current_id = async_run(func, *args, **kwargs)
    while True:
        time.sleep(0.01)
        for task in list(finished_list):
            if task.task_id == current_id:
                with lock:
                    finished_list.remove(task)
                return task.result


def start():
    """Run the loop in a new daemon thread (Forge: the process's main thread); returns it."""
    _stop.clear()
    thread = threading.Thread(target=loop, name="forge-main-thread", daemon=True)
    thread.start()
    return thread


def stop(thread=None):
    _stop.set()
    if thread is not None:
        thread.join(timeout=10)
