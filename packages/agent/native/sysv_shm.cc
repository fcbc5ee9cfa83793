// System V shared memory for Node.js: the segments SageMaker Edge clients pass by shmid (SharedMemoryHandle). Also
// the agent's other native needs (no second addon to build): peer credentials of a Unix socket, the calling thread's
// CPU clock, and glibc's malloc thresholds.
//
// Safety design:
// - An attachment is an external ArrayBuffer over the whole segment, its length the segment's size as the
//   kernel reports it after shmat (a SysV segment never changes size), so no JS view of it can reach past the
//   end: V8 bounds-checks every access against that length.
// - detach() first detaches the ArrayBuffer (every Buffer/TypedArray over it becomes zero-length), then shmdt():
//   JS can never touch an unmapped segment. If JS drops an attachment without detach(), its finalizer runs
//   shmdt() after garbage collection.
// - shmids are validated to be int-range integers before they reach the kernel (no silent truncation).
// No global state: every attachment carries its own record, so the addon is safe in worker threads.

#include <napi.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <vector>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace {

struct Attachment {
  void* address;
  size_t size;
  bool attached;
};

const char* ErrnoName(int error) {
  switch (error) {
    case EACCES: return "EACCES";
    case EEXIST: return "EEXIST";
    case EFAULT: return "EFAULT";
    case EIDRM: return "EIDRM";
    case EINVAL: return "EINVAL";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOENT: return "ENOENT";
    case ENOMEM: return "ENOMEM";
    case ENOSPC: return "ENOSPC";
    case EOVERFLOW: return "EOVERFLOW";
    case EPERM: return "EPERM";
    case EBADF: return "EBADF";
    case ENOTSOCK: return "ENOTSOCK";
    case ENOSYS: return "ENOSYS";
    case ERANGE: return "ERANGE";
    default: return "EUNKNOWN";
  }
}

/** An Error with `code` (errno name), `errno` and `syscall`, like Node's own system errors. */
Napi::Error SystemError(Napi::Env env, int error, const std::string& call) {
  Napi::Error exception = Napi::Error::New(
      env, call + " failed: " + ErrnoName(error) + " (" + std::strerror(error) + ")");
  exception.Value().Set("code", ErrnoName(error));
  exception.Value().Set("errno", Napi::Number::New(env, error));
  exception.Value().Set("syscall", call);
  return exception;
}

/** Reads argument `index` as a shmid: an integer 0..INT_MAX, or throws EINVAL before any syscall. */
int ShmidArgument(const Napi::CallbackInfo& info, size_t index) {
  Napi::Env env = info.Env();
  if (info.Length() <= index || !info[index].IsNumber()) {
    throw Napi::TypeError::New(env, "shmid must be a number (an integer 0.." +
                                        std::to_string(std::numeric_limits<int>::max()) + ")");
  }
  double value = info[index].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(value) || value != std::floor(value) || value < 0 ||
      value > static_cast<double>(std::numeric_limits<int>::max())) {
    Napi::Error error = Napi::RangeError::New(
        env, "shmid " + info[index].ToString().Utf8Value() + " is not a valid System V shmid; expected an integer 0.." +
                 std::to_string(std::numeric_limits<int>::max()));
    error.Value().Set("code", "EINVAL");
    throw error;
  }
  return static_cast<int>(value);
}

struct shmid_ds StatSegment(Napi::Env env, int shmid) {
  struct shmid_ds ds;
  std::memset(&ds, 0, sizeof ds);
  if (shmctl(shmid, IPC_STAT, &ds) != 0) {
    throw SystemError(env, errno, "shmctl(" + std::to_string(shmid) + ", IPC_STAT)");
  }
  return ds;
}

void FinalizeAttachment(napi_env /*env*/, void* data, void* /*hint*/) {
  Attachment* attachment = static_cast<Attachment*>(data);
  if (attachment->attached) shmdt(attachment->address);
  delete attachment;
}

Napi::Value Attach(const Napi::CallbackInfo& info, bool readOnly) {
  Napi::Env env = info.Env();
  int shmid = ShmidArgument(info, 0);
  void* address = shmat(shmid, nullptr, readOnly ? SHM_RDONLY : 0);
  if (address == reinterpret_cast<void*>(-1)) {
    throw SystemError(env, errno, std::string("shmat(") + std::to_string(shmid) + (readOnly ? ", SHM_RDONLY)" : ")"));
  }
  // Size after attaching: while we are attached the id cannot be rebound to another segment, so this is the
  // size of the very mapping we hold.
  struct shmid_ds ds;
  if (shmctl(shmid, IPC_STAT, &ds) != 0) {
    int error = errno;
    shmdt(address);
    throw SystemError(env, error, "shmctl(" + std::to_string(shmid) + ", IPC_STAT)");
  }
  Attachment* attachment = new Attachment{address, static_cast<size_t>(ds.shm_segsz), true};

  napi_value buffer;
  napi_status status =
      napi_create_external_arraybuffer(env, address, attachment->size, nullptr, nullptr, &buffer);
  if (status == napi_ok) {
    status = napi_wrap(env, buffer, attachment, FinalizeAttachment, nullptr, nullptr);
  }
  if (status != napi_ok) {
    shmdt(address);
    delete attachment;
    throw Napi::Error::New(env, "cannot expose the attached segment to JavaScript (external ArrayBuffers not allowed?)");
  }
  return Napi::Value(env, buffer);
}

/** attachReadOnly(shmid): ArrayBuffer — the whole segment, mapped SHM_RDONLY (writing to it kills the process). */
Napi::Value AttachReadOnly(const Napi::CallbackInfo& info) { return Attach(info, true); }

/** attachReadWrite(shmid): ArrayBuffer — the whole segment, mapped read-write (tests, benchmarks, clients). */
Napi::Value AttachReadWrite(const Napi::CallbackInfo& info) { return Attach(info, false); }

/** detach(attachment): boolean — unmaps; false if it was detached already. Views over it become empty first. */
Napi::Value Detach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) {
    throw Napi::TypeError::New(env, "detach expects an ArrayBuffer returned by attachReadOnly/attachReadWrite");
  }
  void* data = nullptr;
  if (napi_unwrap(env, info[0], &data) != napi_ok || data == nullptr) {
    throw Napi::TypeError::New(env, "detach expects an ArrayBuffer returned by attachReadOnly/attachReadWrite");
  }
  Attachment* attachment = static_cast<Attachment*>(data);
  if (!attachment->attached) return Napi::Boolean::New(env, false);
  if (napi_detach_arraybuffer(env, info[0]) != napi_ok) {
    throw Napi::Error::New(env, "cannot detach the ArrayBuffer over the segment; it stays mapped");
  }
  attachment->attached = false;
  if (shmdt(attachment->address) != 0) throw SystemError(env, errno, "shmdt");
  return Napi::Boolean::New(env, true);
}

/**
 * stat(shmid): { size, mode, attachCount, changeTime, creatorPid, ownerUid, ownerGid, creatorUid, creatorGid,
 * markedForRemoval } via IPC_STAT.
 */
Napi::Value Stat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct shmid_ds ds = StatSegment(env, ShmidArgument(info, 0));
  Napi::Object result = Napi::Object::New(env);
  result.Set("size", Napi::Number::New(env, static_cast<double>(ds.shm_segsz)));
  result.Set("mode", Napi::Number::New(env, ds.shm_perm.mode & 0777));
  result.Set("attachCount", Napi::Number::New(env, static_cast<double>(ds.shm_nattch)));
  result.Set("changeTime", Napi::Number::New(env, static_cast<double>(ds.shm_ctime)));
  result.Set("creatorPid", Napi::Number::New(env, ds.shm_cpid));
  result.Set("ownerUid", Napi::Number::New(env, ds.shm_perm.uid));
  result.Set("ownerGid", Napi::Number::New(env, ds.shm_perm.gid));
  result.Set("creatorUid", Napi::Number::New(env, ds.shm_perm.cuid));
  result.Set("creatorGid", Napi::Number::New(env, ds.shm_perm.cgid));
#ifdef SHM_DEST
  result.Set("markedForRemoval", Napi::Boolean::New(env, (ds.shm_perm.mode & SHM_DEST) != 0));
#else
  result.Set("markedForRemoval", Napi::Boolean::New(env, false));
#endif
  return result;
}

/** segmentSize(shmid): number — the segment's size in bytes (IPC_STAT shm_segsz). */
Napi::Value SegmentSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct shmid_ds ds = StatSegment(env, ShmidArgument(info, 0));
  return Napi::Number::New(env, static_cast<double>(ds.shm_segsz));
}

/** create(size): { shmid } — a new IPC_PRIVATE segment, mode 0600. */
Napi::Value Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double size = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : NAN;
  if (!std::isfinite(size) || size != std::floor(size) || size < 1 || size > 9007199254740991.0) {
    throw Napi::RangeError::New(env, "create expects a size in bytes, an integer ≥ 1");
  }
  int shmid = shmget(IPC_PRIVATE, static_cast<size_t>(size), IPC_CREAT | IPC_EXCL | 0600);
  if (shmid < 0) throw SystemError(env, errno, "shmget(IPC_PRIVATE, " + std::to_string(static_cast<size_t>(size)) + ")");
  Napi::Object result = Napi::Object::New(env);
  result.Set("shmid", Napi::Number::New(env, shmid));
  return result;
}

/** remove(shmid): marks the segment for removal (IPC_RMID); it goes when the last process detaches. */
Napi::Value Remove(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int shmid = ShmidArgument(info, 0);
  if (shmctl(shmid, IPC_RMID, nullptr) != 0) {
    throw SystemError(env, errno, "shmctl(" + std::to_string(shmid) + ", IPC_RMID)");
  }
  return env.Undefined();
}

/** setMode(shmid, mode): sets the permission bits (IPC_SET), e.g. 0o400 as clients do before a call. */
Napi::Value SetMode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int shmid = ShmidArgument(info, 0);
  double mode = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : NAN;
  if (!std::isfinite(mode) || mode != std::floor(mode) || mode < 0 || mode > 0777) {
    throw Napi::RangeError::New(env, "setMode expects permission bits, an integer 0..0o777");
  }
  struct shmid_ds ds = StatSegment(env, shmid);
  ds.shm_perm.mode = static_cast<unsigned short>(mode);
  if (shmctl(shmid, IPC_SET, &ds) != 0) {
    throw SystemError(env, errno, "shmctl(" + std::to_string(shmid) + ", IPC_SET)");
  }
  return env.Undefined();
}

/**
 * peerCredentials(fd): { pid, uid, gid, groups } of the process at the other end of a connected Unix socket, as
 * the kernel recorded them when it connected (SO_PEERCRED; supplementary groups by SO_PEERGROUPS, Linux 4.13+,
 * else an empty list). Throws a system error (ENOTSOCK, EBADF, ENOSYS where the platform has no SO_PEERCRED).
 */
Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "fd must be a number");
  int fd = info[0].As<Napi::Number>().Int32Value();
#ifdef SO_PEERCRED
  struct ucred credentials;
  socklen_t length = sizeof(credentials);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) {
    throw SystemError(env, errno, "getsockopt(SO_PEERCRED)");
  }
  Napi::Array groups = Napi::Array::New(env);
#ifdef SO_PEERGROUPS
  std::vector<gid_t> list(64);
  socklen_t size = static_cast<socklen_t>(list.size() * sizeof(gid_t));
  int result = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, list.data(), &size);
  if (result != 0 && errno == ERANGE) {
    list.resize(size / sizeof(gid_t) + 1);
    size = static_cast<socklen_t>(list.size() * sizeof(gid_t));
    result = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, list.data(), &size);
  }
  if (result != 0) throw SystemError(env, errno, "getsockopt(SO_PEERGROUPS)");
  for (size_t i = 0; i < size / sizeof(gid_t); i++) groups.Set(static_cast<uint32_t>(i), Napi::Number::New(env, list[i]));
#endif
  Napi::Object peer = Napi::Object::New(env);
  peer.Set("pid", Napi::Number::New(env, credentials.pid));
  peer.Set("uid", Napi::Number::New(env, credentials.uid));
  peer.Set("gid", Napi::Number::New(env, credentials.gid));
  peer.Set("groups", groups);
  return peer;
#else
  (void)fd;
  throw SystemError(env, ENOSYS, "getsockopt(SO_PEERCRED)");
#endif
}

// The calling thread's CPU time in nanoseconds (CLOCK_THREAD_CPUTIME_ID, exact, a vDSO call on Linux): the agent
// judges a run on its event loop by the CPU its thread spent, not by wall time a preempted thread also counts.
Napi::Value ThreadCpuNanos(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct timespec now;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now) != 0) throw SystemError(env, errno, "clock_gettime");
  return Napi::Number::New(env, static_cast<double>(now.tv_sec) * 1e9 + static_cast<double>(now.tv_nsec));
}

// Sets glibc's M_MMAP_THRESHOLD, M_TRIM_THRESHOLD and M_TOP_PAD (bytes, 0..INT_MAX): allocations below the first
// come from the heaps rather than from mmap(); a heap is trimmed once more than the second is free at its top, and
// then keeps the third. onnxruntime-node copies every output into a new ArrayBuffer, freed only when V8 collects it:
// with glibc's own thresholds a model with large outputs got fresh pages (a page fault per 4 KiB) for each one.
// Returns "applied", "refused" (glibc refused the mmap threshold, as some versions do over HEAP_MAX_SIZE / 2: nothing
// was set) or "unsupported" (the C library is not glibc).
Napi::Value SetMallocThresholds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* names[] = {"mmap threshold", "trim threshold", "top pad"};
  int values[3];
  for (size_t index = 0; index < 3; index++) {
    double value = info.Length() > index && info[index].IsNumber() ? info[index].As<Napi::Number>().DoubleValue() : -1;
    if (!std::isfinite(value) || value != std::floor(value) || value < 0 ||
        value > static_cast<double>(std::numeric_limits<int>::max())) {
      throw Napi::RangeError::New(env, std::string(names[index]) + " must be a whole number of bytes, 0.." +
                                           std::to_string(std::numeric_limits<int>::max()));
    }
    values[index] = static_cast<int>(value);
  }
#ifdef __GLIBC__
  // mallopt returns 1 on success. Only the mmap threshold has a limit some glibc versions check, so it goes first: a
  // refusal leaves all three as they were, never a trim threshold without its top pad.
  if (mallopt(M_MMAP_THRESHOLD, values[0]) != 1) return Napi::String::New(env, "refused");
  mallopt(M_TRIM_THRESHOLD, values[1]);
  mallopt(M_TOP_PAD, values[2]);
  return Napi::String::New(env, "applied");
#else
  return Napi::String::New(env, "unsupported");
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("segmentSize", Napi::Function::New(env, SegmentSize, "segmentSize"));
  exports.Set("stat", Napi::Function::New(env, Stat, "stat"));
  exports.Set("attachReadOnly", Napi::Function::New(env, AttachReadOnly, "attachReadOnly"));
  exports.Set("attachReadWrite", Napi::Function::New(env, AttachReadWrite, "attachReadWrite"));
  exports.Set("detach", Napi::Function::New(env, Detach, "detach"));
  exports.Set("create", Napi::Function::New(env, Create, "create"));
  exports.Set("remove", Napi::Function::New(env, Remove, "remove"));
  exports.Set("setMode", Napi::Function::New(env, SetMode, "setMode"));
  exports.Set("peerCredentials", Napi::Function::New(env, PeerCredentials, "peerCredentials"));
  exports.Set("threadCpuNanos", Napi::Function::New(env, ThreadCpuNanos, "threadCpuNanos"));
  exports.Set("setMallocThresholds", Napi::Function::New(env, SetMallocThresholds, "setMallocThresholds"));
  return exports;
}

}  // namespace

NODE_API_MODULE(sysv_shm, Init)
