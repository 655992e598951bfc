using System.Runtime.InteropServices;

namespace NetStack.Cli.Run;

/// <summary>
/// The system calls <c>netstack run</c> needs beyond what .NET offers: a Unix socket pair that
/// carries a descriptor (SCM_RIGHTS), descriptor flags, a bind mount, signals and execvp.
/// Linux x86_64 and arm64 layouts.
/// </summary>
internal static unsafe partial class RunInterop
{
    private const string Library = "libc";
    private const int AF_UNIX = 1;
    private const int SOCK_SEQPACKET = 5;
    private const int SOCK_CLOEXEC = 0x80000;
    private const int SOL_SOCKET = 1;
    private const int SCM_RIGHTS = 1;
    private const int MSG_CMSG_CLOEXEC = 0x40000000;
    private const int F_GETFD = 1;
    private const int F_SETFD = 2;
    private const int FD_CLOEXEC = 1;
    private const short POLLIN = 0x1;
    private const int EINTR = 4;
    private const ulong MS_BIND = 4096;
    private const int SIGPIPE = 13;
    private const int SIG_SETMASK = 2;

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MessageHeader
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Vectors;
        public nuint VectorCount;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    // struct cmsghdr { size_t len; int level; int type; } followed by the data at offset 16.
    private const int ControlHeaderLength = 16;

    // CMSG_SPACE(sizeof(int)): the header and one descriptor, padded to 8 bytes.
    private const int ControlSpace = 24;

    [LibraryImport(Library, EntryPoint = "socketpair", SetLastError = true)]
    private static partial int SocketPair(int domain, int type, int protocol, int* pair);

    [LibraryImport(Library, EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int fd, int command, int argument);

    [LibraryImport(Library, EntryPoint = "close", SetLastError = true)]
    private static partial int CloseFd(int fd);

    [LibraryImport(Library, EntryPoint = "sendmsg", SetLastError = true)]
    private static partial nint SendMessage(int fd, MessageHeader* message, int flags);

    [LibraryImport(Library, EntryPoint = "recvmsg", SetLastError = true)]
    private static partial nint ReceiveMessage(int fd, MessageHeader* message, int flags);

    [LibraryImport(Library, EntryPoint = "poll", SetLastError = true)]
    private static partial int Poll(PollFd* fds, nuint count, int timeoutMilliseconds);

    [LibraryImport(Library, EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Mount(string source, string target, string? type, ulong flags, nint data);

    [LibraryImport(Library, EntryPoint = "execvp", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Execvp(string file, nint* argv);

    [LibraryImport(Library, EntryPoint = "signal", SetLastError = true)]
    private static partial nint Signal(int signal, nint handler);

    [LibraryImport(Library, EntryPoint = "sigprocmask", SetLastError = true)]
    private static partial int SigProcMask(int how, byte* set, byte* old);

    [LibraryImport(Library, EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    /// <summary>The message for an errno value.</summary>
    public static string Describe(int errno) => Marshal.GetPInvokeErrorMessage(errno);

    /// <summary>
    /// A connected AF_UNIX SOCK_SEQPACKET pair (message boundaries, end of file when the other
    /// end closes): <paramref name="ours"/> is close-on-exec, <paramref name="theirs"/> is not, so
    /// a child process inherits it.
    /// </summary>
    public static void MakePair(out int ours, out int theirs)
    {
        int* pair = stackalloc int[2];
        if (SocketPair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
            throw new IOException($"socketpair: {Describe(Marshal.GetLastPInvokeError())}");
        ours = pair[0];
        theirs = pair[1];
        SetCloseOnExec(theirs, false);
    }

    /// <summary>Sets or clears FD_CLOEXEC on <paramref name="fd"/>.</summary>
    public static void SetCloseOnExec(int fd, bool on)
    {
        int flags = Fcntl(fd, F_GETFD, 0);
        if (flags < 0 || Fcntl(fd, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC) < 0)
            throw new IOException($"fcntl F_SETFD on descriptor {fd}: {Describe(Marshal.GetLastPInvokeError())}");
    }

    /// <summary>Closes a descriptor (errors ignored: there is nothing to do about them).</summary>
    public static void Close(int fd) => CloseFd(fd);

    /// <summary>Sends <paramref name="payload"/> as one message, with descriptor <paramref name="passed"/> (SCM_RIGHTS) unless it is -1.</summary>
    public static void SendWithDescriptor(int socket, ReadOnlySpan<byte> payload, int passed)
    {
        byte* control = stackalloc byte[ControlSpace];
        new Span<byte>(control, ControlSpace).Clear();
        *(nuint*)control = ControlHeaderLength + sizeof(int);
        *(int*)(control + 8) = SOL_SOCKET;
        *(int*)(control + 12) = SCM_RIGHTS;
        *(int*)(control + ControlHeaderLength) = passed;
        fixed (byte* data = payload)
        {
            var vector = new IoVec { Base = data, Length = (nuint)payload.Length };
            var message = passed < 0
                ? new MessageHeader { Vectors = &vector, VectorCount = 1 }
                : new MessageHeader { Vectors = &vector, VectorCount = 1, Control = control, ControlLength = ControlSpace };
            nint sent;
            do
                sent = SendMessage(socket, &message, 0);
            while (sent < 0 && Marshal.GetLastPInvokeError() == EINTR);
            if (sent < 0)
                throw new IOException($"sendmsg: {Describe(Marshal.GetLastPInvokeError())}");
        }
    }

    /// <summary>
    /// Waits up to <paramref name="timeoutMilliseconds"/> for one message; returns its length (0:
    /// the other end closed without sending) and the descriptor it carried (-1: none), received
    /// close-on-exec. Throws <see cref="TimeoutException"/> when nothing came in time.
    /// </summary>
    public static int ReceiveWithDescriptor(int socket, Span<byte> payload, int timeoutMilliseconds, out int passed)
    {
        passed = -1;
        WaitReadable(socket, timeoutMilliseconds);
        byte* control = stackalloc byte[ControlSpace];
        new Span<byte>(control, ControlSpace).Clear();
        fixed (byte* data = payload)
        {
            var vector = new IoVec { Base = data, Length = (nuint)payload.Length };
            var message = new MessageHeader { Vectors = &vector, VectorCount = 1, Control = control, ControlLength = ControlSpace };
            nint received;
            do
                received = ReceiveMessage(socket, &message, MSG_CMSG_CLOEXEC);
            while (received < 0 && Marshal.GetLastPInvokeError() == EINTR);
            if (received < 0)
                throw new IOException($"recvmsg: {Describe(Marshal.GetLastPInvokeError())}");
            if (message.ControlLength >= ControlHeaderLength + sizeof(int)
                && *(int*)(control + 8) == SOL_SOCKET && *(int*)(control + 12) == SCM_RIGHTS)
                passed = *(int*)(control + ControlHeaderLength);
            return (int)received;
        }
    }

    /// <summary>Waits until <paramref name="fd"/> is readable (or at its end); <see cref="TimeoutException"/> after the timeout (-1: none).</summary>
    public static void WaitReadable(int fd, int timeoutMilliseconds)
    {
        var poll = new PollFd { Fd = fd, Events = POLLIN };
        int ready;
        do
            ready = Poll(&poll, 1, timeoutMilliseconds);
        while (ready < 0 && Marshal.GetLastPInvokeError() == EINTR);
        if (ready < 0)
            throw new IOException($"poll: {Describe(Marshal.GetLastPInvokeError())}");
        if (ready == 0)
            throw new TimeoutException();
    }

    /// <summary>Bind-mounts <paramref name="source"/> over <paramref name="target"/>; returns errno (0: done).</summary>
    public static int BindMount(string source, string target) =>
        Mount(source, target, null, MS_BIND, 0) == 0 ? 0 : Marshal.GetLastPInvokeError();

    /// <summary>Sends <paramref name="signal"/> to <paramref name="pid"/>; returns false when it failed (the process is gone).</summary>
    public static bool SendSignal(int pid, int signal) => Kill(pid, signal) == 0;

    /// <summary>
    /// Replaces this process with <paramref name="argv"/>[0] found on PATH (execvp), with an empty
    /// signal mask and SIGPIPE at its default (the runtime ignores it, and an ignored signal stays
    /// ignored across exec). Returns only when that failed, with the errno.
    /// </summary>
    public static int Exec(IReadOnlyList<string> argv)
    {
        var pointers = new nint[argv.Count + 1];
        try
        {
            for (var i = 0; i < argv.Count; i++)
                pointers[i] = Marshal.StringToCoTaskMemUTF8(argv[i]);
            byte* empty = stackalloc byte[128];
            new Span<byte>(empty, 128).Clear();
            Signal(SIGPIPE, 0);
            SigProcMask(SIG_SETMASK, empty, null);
            fixed (nint* vector = pointers)
                Execvp(argv[0], vector);
            return Marshal.GetLastPInvokeError();
        }
        finally
        {
            foreach (var p in pointers)
                Marshal.FreeCoTaskMem(p);
        }
    }
}
