"""Safe outputs on a shared file system: atomic files, one run per folder, disk space.

- `atomic_path(path)`: write to a temporary name in the same folder, moved into place only
  when the write completed (a killed or failed write never leaves a partial file under the
  real name; the temporary is removed on failure). Files get the user's umask, as `open()`.
- `OutputFolder`: the output folder of one run. It refuses --o equal to an input folder,
  a folder that already holds results (unless --force or --resume), a folder another run is
  writing into (a `.simcryo.lock` held with flock, released by the kernel even on kill -9),
  and an unwritable folder; it removes the temporaries a killed run left and, once the run
  starts writing (`begin`), the completion marker `run.json` of a previous run, which the
  run writes again last (`COMPLETE`).
- `require_complete(path)`: refuses an input from a simcryo output folder without run.json
  (a run still going, killed, or failed).
- `check_free_space`, `allocate`: a clear error naming the space needed before a big write;
  `allocate` reserves a memory-mapped file's blocks, so a full disk fails there instead of
  with SIGBUS on a later page write.
"""
import contextlib
import errno
import fcntl
import glob
import os
import shutil
import socket

from simcryo.errors import SimcryoError

COMPLETE = "run.json"  # written last: its presence says the folder's results are whole
LOCK = ".simcryo.lock"
TMP_PREFIX = "tmp-simcryo-"
# temporaries of earlier versions (tempfile.mkstemp names, write_star's .tmp<pid>)
LEGACY_TMP = ("tmp_ckpt_*.pt", ".tmp_*", "*.star.tmp*")


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_name(path):
    """A temporary name beside `path` that keeps its extension (np.save, mrcfile and torch
    look at it) and is recognised as a temporary of this process."""
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f"{TMP_PREFIX}{os.getpid()}-{base}")


def discard(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; on success it replaces `path` (mode by the umask)."""
    tmp = temp_name(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def atomic_write_text(path, text):
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)


def human(nbytes):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1000.0


def check_free_space(folder, nbytes, what):
    """SimcryoError naming the space needed when `folder`'s file system has less free."""
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise SimcryoError(f"not enough free disk space in {folder} for {what}: need "
                           f"{human(nbytes)}, {human(free)} free")


def allocate(path, nbytes, what):
    """Reserve `nbytes` on disk for `path` (created when missing, never truncated), so that
    a memory-mapped write cannot hit a full disk later."""
    check_free_space(os.path.dirname(os.path.abspath(path)), nbytes, what)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if nbytes:
            os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SimcryoError(f"not enough free disk space in {os.path.dirname(path)} for "
                               f"{what}: need {human(nbytes)}") from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        # the file system cannot reserve blocks: the free-space check must do
        if os.fstat(fd).st_size < nbytes:
            os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)


def describe_os_error(exc):
    """One line for an OSError that reached the command line (full disk, read-only, ...)."""
    what = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on the device"
    name = exc.filename
    if name and os.path.basename(str(name)).startswith(TMP_PREFIX):
        name = os.path.join(os.path.dirname(name),
                            os.path.basename(name).split("-", 3)[-1])
    return f"{what}: {name}" if name else what


def _holder(lock_path):
    try:
        with open(lock_path) as fh:
            return fh.read().strip() or "another process"
    except OSError:
        return "another process"


def _same_folder(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


class OutputFolder:
    """The output folder of one run (see the module docstring). `results`: the file names
    the command writes, used to tell a folder that holds results; `inputs`: input files
    (their folders may not be the output) and input folders."""

    def __init__(self, path, results, inputs=(), input_dirs=(), force=False, resume=False):
        self.path = path
        self.results = tuple(results)
        self.inputs, self.input_dirs = tuple(inputs), tuple(input_dirs)
        self.force, self.resume = force, resume
        self._lock = None

    # ---------------------------------------------------------------- checks
    def _check_not_input(self):
        folders = [os.path.dirname(os.path.abspath(p)) for p in self.inputs if p]
        for d in folders + [p for p in self.input_dirs if p]:
            if os.path.isdir(self.path) and _same_folder(self.path, d):
                raise SimcryoError(f"the output folder {self.path} is an input folder; "
                                   "choose another --o")

    def _create(self):
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise SimcryoError(f"cannot create output folder {self.path}: "
                               f"{exc.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise SimcryoError(f"cannot write to output folder {self.path}: permission "
                               "denied or read-only file system")

    def _acquire(self):
        lock_path = os.path.join(self.path, LOCK)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise SimcryoError(f"cannot write to output folder {self.path}: "
                               f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SimcryoError(f"another simcryo run ({_holder(lock_path)}) is writing into "
                               f"{self.path}; wait for it or choose another --o") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock = fd

    def existing_results(self):
        return [r for r in self.results if os.path.exists(os.path.join(self.path, r))]

    def _check_results(self):
        found = self.existing_results()
        if not found or self.resume:
            return
        if not self.force:
            raise SimcryoError(f"{self.path} already holds results ({', '.join(found)}); "
                               "give --force to replace them or choose another --o")
        for name in found:
            discard(os.path.join(self.path, name))

    def _remove_temporaries(self):
        # we hold the lock: no other run writes here, so every temporary is a killed run's
        patterns = (TMP_PREFIX + "*",) + LEGACY_TMP
        for pattern in patterns:
            for p in glob.glob(os.path.join(self.path, pattern)):
                if os.path.isfile(p):
                    discard(p)

    # ---------------------------------------------------------------- life cycle
    def open(self):
        self._check_not_input()
        self._create()
        self._check_not_input()  # the folder may have existed as a link to an input
        self._acquire()
        try:
            self._check_results()
            self._remove_temporaries()
        except BaseException:
            self.close()
            raise
        return self

    def begin(self):
        """Called when the run starts to change the folder (after a resume was verified):
        its results are incomplete until run.json is written again."""
        discard(os.path.join(self.path, COMPLETE))

    def file(self, name):
        return os.path.join(self.path, name)

    def close(self):
        if self._lock is not None:
            os.close(self._lock)  # releases the flock; the empty lock file stays
            self._lock = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()


def require_complete(path, what="input"):
    """Refuse a file inside a simcryo output folder (it has a lock file) whose run did not
    finish (no run.json)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(os.path.join(folder, LOCK)) and \
            not os.path.exists(os.path.join(folder, COMPLETE)):
        raise SimcryoError(f"{what} {path} is from a simcryo run that did not finish (no "
                           f"{COMPLETE} in {folder}); finish it (--resume) or rerun it")
