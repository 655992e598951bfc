using System.Runtime.InteropServices;

namespace NetStack.Interop;

/// <summary>
/// The parts of the io_uring ABI (linux/io_uring.h) the TUN device uses: the three system calls,
/// the setup parameters, the submission and completion entries, and the shared rings mapped
/// from the ring descriptor.
/// </summary>
/// <remarks>
/// The system call numbers 425–427 are the same on x86_64 and arm64 (they were added after the
/// tables were unified). libc's syscall() is variadic; on both ABIs integer arguments of a
/// variadic call travel in the same registers as fixed ones, so a fixed prototype is safe.
/// </remarks>
internal static unsafe partial class IoUring
{
    private const long SysSetup = 425;
    private const long SysEnter = 426;
    private const long SysRegister = 427;

    // io_uring_setup flags.
    internal const uint SetupCqSize = 1u << 3;
    internal const uint SetupSubmitAll = 1u << 7;
    internal const uint SetupCoopTaskRun = 1u << 8;
    internal const uint SetupTaskRunFlag = 1u << 9;

    // io_uring_params.features.
    internal const uint FeatureSingleMmap = 1u << 0;
    internal const uint FeatureNoDrop = 1u << 1;
    internal const uint FeatureExtArg = 1u << 8;

    // io_uring_enter flags.
    internal const uint EnterGetEvents = 1u << 0;
    internal const uint EnterExtArg = 1u << 3;

    // Flags in the shared SQ ring's flags word.
    internal const uint SqCqOverflow = 1u << 1;
    internal const uint SqTaskRun = 1u << 2;

    // mmap offsets of the three regions.
    internal const long OffSqRing = 0;
    internal const long OffCqRing = 0x8000000;
    internal const long OffSqes = 0x10000000;

    // Opcodes.
    internal const byte OpPollAdd = 6;
    internal const byte OpWrite = 23;
    internal const byte OpReadMultishot = 49;

    // sqe.flags.
    internal const byte SqeBufferSelect = 1 << 5;

    // cqe.flags: the buffer id sits in the upper 16 bits when F_BUFFER is set; F_MORE says a
    // multishot request stays armed.
    internal const uint CqeBuffer = 1u << 0;
    internal const uint CqeMore = 1u << 1;
    internal const int CqeBufferShift = 16;

    // io_uring_register opcodes.
    internal const uint RegisterPbufRing = 22;
    internal const uint RegisterSyncCancel = 24;

    // IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_ANY: every request on the ring.
    internal const uint CancelAllAny = (1u << 0) | (1u << 2);

    internal const int ENOBUFS = 105;
    internal const int ETIME = 62;
    internal const int ECANCELED = 125;

    /// <summary>struct io_sqring_offsets.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct SqOffsets
    {
        internal uint Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1;
        internal ulong UserAddr;
    }

    /// <summary>struct io_cqring_offsets.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct CqOffsets
    {
        internal uint Head, Tail, RingMask, RingEntries, Overflow, Cqes, Flags, Resv1;
        internal ulong UserAddr;
    }

    /// <summary>struct io_uring_params.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct Params
    {
        internal uint SqEntries, CqEntries, Flags, SqThreadCpu, SqThreadIdle, Features, WqFd;
        internal uint Resv0, Resv1, Resv2;
        internal SqOffsets SqOff;
        internal CqOffsets CqOff;
    }

    /// <summary>struct io_uring_sqe (64 bytes), with the fields this code fills.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 64)]
    internal struct Sqe
    {
        [FieldOffset(0)] internal byte Opcode;
        [FieldOffset(1)] internal byte Flags;
        [FieldOffset(2)] internal ushort IoPrio;
        [FieldOffset(4)] internal int Fd;
        [FieldOffset(8)] internal ulong Off;
        [FieldOffset(16)] internal ulong Addr;
        [FieldOffset(24)] internal uint Len;
        [FieldOffset(28)] internal uint OpFlags;
        [FieldOffset(32)] internal ulong UserData;
        [FieldOffset(40)] internal ushort BufGroup;
    }

    /// <summary>struct io_uring_cqe (16 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct Cqe
    {
        internal ulong UserData;
        internal int Res;
        internal uint Flags;
    }

    /// <summary>struct io_uring_getevents_arg: the wait's timeout for IORING_ENTER_EXT_ARG.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct GetEventsArg
    {
        internal ulong SigMask;
        internal uint SigMaskSize;
        internal uint MinWaitMicroseconds;
        internal ulong Timespec;
    }

    /// <summary>struct __kernel_timespec.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct Timespec
    {
        internal long Seconds;
        internal long Nanoseconds;
    }

    /// <summary>struct io_uring_buf_reg: registers a provided-buffer ring.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct BufReg
    {
        internal ulong RingAddr;
        internal uint RingEntries;
        internal ushort Bgid;
        internal ushort Flags;
        internal ulong Resv0, Resv1, Resv2;
    }

    /// <summary>struct io_uring_buf (16 bytes): one entry of a provided-buffer ring.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct Buf
    {
        internal ulong Addr;
        internal uint Len;
        internal ushort Bid;
        // In entry 0 this field is the ring's tail, which the application advances.
        internal ushort Resv;
    }

    /// <summary>struct io_uring_sync_cancel_reg.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct SyncCancelReg
    {
        internal ulong Addr;
        internal int Fd;
        internal uint Flags;
        internal Timespec Timeout;
        internal byte Opcode;
        internal byte Pad0, Pad1, Pad2, Pad3, Pad4, Pad5, Pad6;
        internal ulong Pad20, Pad21, Pad22;
    }

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6);

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    internal static partial void* Mmap(void* address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    internal static partial int Munmap(void* address, nuint length);

    internal const int ProtRead = 1;
    internal const int ProtWrite = 2;
    internal const int MapShared = 0x01;
    internal const int MapPopulate = 0x8000;

    /// <summary>io_uring_setup(2): the ring descriptor, or -1 with errno set.</summary>
    internal static int Setup(uint entries, Params* parameters) =>
        (int)Syscall(SysSetup, entries, (long)parameters, 0, 0, 0, 0);

    /// <summary>io_uring_enter(2): how many entries were submitted, or -1 with errno set.</summary>
    internal static int Enter(int fd, uint toSubmit, uint minComplete, uint flags, void* argument, nuint argumentSize) =>
        (int)Syscall(SysEnter, fd, toSubmit, minComplete, flags, (long)argument, (long)argumentSize);

    /// <summary>io_uring_register(2): 0 (or a count) on success, -1 with errno set.</summary>
    internal static int Register(int fd, uint opcode, void* argument, uint count) =>
        (int)Syscall(SysRegister, fd, opcode, (long)argument, count, 0, 0);
}
