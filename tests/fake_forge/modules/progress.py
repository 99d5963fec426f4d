"""The fake Forge's task registry (what its progress API polls by task id)."""
queued = []
current_task = None
finished = []


def add_task_to_queue(id_task):
    queued.append(id_task)


def start_task(id_task):
    global current_task
    current_task = id_task


def finish_task(id_task):
    global current_task
    if current_task == id_task:
        current_task = None
    finished.append(id_task)
