using System.Runtime.InteropServices;
using NetStack.Interop;

namespace NetStack.Device;

/// <summary>
/// Batched TUN I/O through io_uring: one multishot read keeps taking packets into a ring of
/// provided buffers, a poll on the wake eventfd ends waits, and writes queue as submission
/// entries that go to the kernel together, so one io_uring_enter moves many packets.
/// </summary>
/// <remarks>
/// <para>
/// Reads: IORING_OP_READ_MULTISHOT (Linux 6.7) with a provided-buffer ring (IORING_REGISTER_PBUF_RING,
/// 5.19). One armed request drains every packet the TUN queue holds each time it becomes
/// readable, each into a buffer the kernel picks; the completion names the buffer, which goes back
/// to the ring once its packet is copied out. Unlike several plain reads armed at once, this wakes
/// one waiter per arrival, not every pending read. The ring runs with COOP_TASKRUN and
/// TASKRUN_FLAG: the kernel finishes completions when the reader enters, and says in the SQ flags
/// when some are waiting, so a busy reader enters only when there is something to collect.
/// </para>
/// <para>
/// Writes: each packet is copied into a write slot and queued; the queue goes out with the next
/// enter, which the reader's next <see cref="TryRead"/> makes at once (also collecting what has
/// arrived), or earlier when <see cref="FlushThreshold"/> writes are waiting. So the writes one
/// packet (or one command, or one timer) causes leave together, and never wait behind the
/// processing of other packets. A TUN write completes inline during submission, in submission
/// order, so packets leave in the order they were queued.
/// </para>
/// <para>
/// Threading: one reader thread (the one in <see cref="TryRead"/>) reaps completions. Writes from
/// that thread queue; writes from any other thread first submit what is queued and then write
/// directly (<see cref="Gate"/> keeps the two orders one). The ring is a <see cref="SafeHandle"/>:
/// users hold a reference while inside, and the last one out cancels what is in flight and
/// releases the memory.
/// </para>
/// </remarks>
internal sealed unsafe class TunRing : SafeHandle
{
    /// <summary>Queued writes that trigger a submission on their own.</summary>
    internal const int FlushThreshold = 32;

    private const uint SqEntries = 128;
    private const uint CqEntries = 1024;
    // Read buffers: a power of two (the buffer ring's size). With 64 KiB super-segments only 4:
    // a multishot read fills every free buffer at once, and 16 of them (1 MiB) ran measurably
    // slower kernel → stack than 4, whose packets are still in cache when the loop copies them
    // on (the read stops with ENOBUFS and is armed again at the next enter).
    private const int SmallReadBuffers = 64;
    private const int LargeReadBuffers = 4;
    private const int WriteSlots = 64;
    private const ushort BufferGroup = 0;

    // user_data: the kind in the top byte, a write slot number below.
    private const ulong KindRead = 1UL << 56;
    private const ulong KindWrite = 2UL << 56;
    private const ulong KindWake = 3UL << 56;
    private const ulong KindMask = 0xFFUL << 56;

    private readonly int _ringFd;
    private readonly int _tunFd;
    private readonly int _wakeFd;
    private readonly int _headerLength;

    private readonly byte* _sqRing;
    private readonly nuint _sqRingSize;
    private readonly byte* _cqRing; // == _sqRing with IORING_FEAT_SINGLE_MMAP
    private readonly nuint _cqRingSize;
    private readonly IoUring.Sqe* _sqes;
    private readonly nuint _sqesSize;
    private readonly uint* _sqHead;
    private readonly uint* _sqTail;
    private readonly uint* _sqFlags;
    private readonly uint _sqMask;
    private readonly uint* _cqHead;
    private readonly uint* _cqTail;
    private readonly uint _cqMask;
    private readonly IoUring.Cqe* _cqes;

    private readonly byte* _readMemory;
    private readonly int _readBufferSize;
    private readonly IoUring.Buf* _bufferRing;
    private readonly int _readBuffers;
    private ushort _bufferTail;

    // The buffer whose packet TryReadInPlace handed out: it goes back to the kernel at the
    // reader's next call (-1: none).
    private int _heldBuffer = -1;

    private readonly byte* _writeMemory;
    private readonly int _writeSlotSize;
    private readonly int[] _freeWrites = new int[WriteSlots];
    private int _freeCount;

    private readonly object _gate = new();
    private uint _sqLocalTail;
    private bool _readArmed;
    private bool _wakeArmed;
    private volatile int _readerThread = -1;
    private bool _cancelFailed;
    private long _writeErrors;
    private int _lastWriteError;
    private long _enters;

    private TunRing(int ringFd, int tunFd, int wakeFd, int headerLength, int maxPacket, in IoUring.Params p)
        : base(invalidHandleValue: -1, ownsHandle: true)
    {
        SetHandle(ringFd);
        _ringFd = ringFd;
        _tunFd = tunFd;
        _wakeFd = wakeFd;
        _headerLength = headerLength;

        _sqRingSize = p.SqOff.Array + p.SqEntries * sizeof(uint);
        _cqRingSize = p.CqOff.Cqes + p.CqEntries * (uint)sizeof(IoUring.Cqe);
        bool single = (p.Features & IoUring.FeatureSingleMmap) != 0;
        if (single)
            _sqRingSize = _cqRingSize = Math.Max(_sqRingSize, _cqRingSize);
        _sqRing = Map(_sqRingSize, IoUring.OffSqRing);
        _cqRing = single ? _sqRing : Map(_cqRingSize, IoUring.OffCqRing);
        _sqesSize = p.SqEntries * (uint)sizeof(IoUring.Sqe);
        _sqes = (IoUring.Sqe*)Map(_sqesSize, IoUring.OffSqes);

        _sqHead = (uint*)(_sqRing + p.SqOff.Head);
        _sqTail = (uint*)(_sqRing + p.SqOff.Tail);
        _sqFlags = (uint*)(_sqRing + p.SqOff.Flags);
        _sqMask = *(uint*)(_sqRing + p.SqOff.RingMask);
        // The index array maps ring slot i to entry i, once and for all.
        uint* array = (uint*)(_sqRing + p.SqOff.Array);
        for (uint i = 0; i < p.SqEntries; i++)
            array[i] = i;
        _sqLocalTail = *_sqTail;
        _cqHead = (uint*)(_cqRing + p.CqOff.Head);
        _cqTail = (uint*)(_cqRing + p.CqOff.Tail);
        _cqMask = *(uint*)(_cqRing + p.CqOff.RingMask);
        _cqes = (IoUring.Cqe*)(_cqRing + p.CqOff.Cqes);

        // Read buffers: the virtio-net header (when there is one) and the longest packet.
        _readBufferSize = (headerLength + maxPacket + 63) & ~63;
        _readBuffers = _readBufferSize > 16384 ? LargeReadBuffers : SmallReadBuffers;
        _readMemory = (byte*)NativeMemory.AlignedAlloc((nuint)_readBufferSize * (nuint)_readBuffers, 4096);
        _bufferRing = (IoUring.Buf*)NativeMemory.AlignedAlloc((nuint)(sizeof(IoUring.Buf) * _readBuffers), 4096);
        NativeMemory.Clear(_bufferRing, (nuint)(sizeof(IoUring.Buf) * _readBuffers));
        _writeSlotSize = _readBufferSize;
        _writeMemory = (byte*)NativeMemory.AlignedAlloc((nuint)_writeSlotSize * WriteSlots, 4096);
        for (int i = 0; i < WriteSlots; i++)
            _freeWrites[i] = WriteSlots - 1 - i;
        _freeCount = WriteSlots;
    }

    /// <summary>
    /// Sets up a ring for <paramref name="tunFd"/>, or returns null when this kernel cannot
    /// (io_uring missing or disabled, or too old for multishot reads, provided-buffer rings or
    /// wait timeouts); <paramref name="reason"/> then says why.
    /// </summary>
    internal static TunRing? TryCreate(int tunFd, int wakeFd, int headerLength, int maxPacket, out string? reason)
    {
        IoUring.Params p = default;
        p.Flags = IoUring.SetupCqSize | IoUring.SetupSubmitAll | IoUring.SetupCoopTaskRun | IoUring.SetupTaskRunFlag;
        p.CqEntries = CqEntries;
        int fd = IoUring.Setup(SqEntries, &p);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            reason = $"io_uring_setup failed: {LibC.ErrorText(errno)} ({LibC.ErrorName(errno)})";
            return null;
        }

        const uint needed = IoUring.FeatureExtArg | IoUring.FeatureNoDrop;
        if ((p.Features & needed) != needed)
        {
            LibC.Close(fd);
            reason = "the kernel's io_uring lacks wait timeouts (IORING_FEAT_EXT_ARG) or overflow safety (NODROP)";
            return null;
        }

        TunRing ring;
        try
        {
            ring = new TunRing(fd, tunFd, wakeFd, headerLength, maxPacket, p);
        }
        catch (Exception e)
        {
            LibC.Close(fd);
            reason = e.Message;
            return null;
        }

        if (!ring.RegisterBuffers(out reason))
        {
            ring.Dispose();
            return null;
        }
        reason = null;
        return ring;
    }

    private byte* Map(nuint size, long offset)
    {
        void* p = IoUring.Mmap(null, size, IoUring.ProtRead | IoUring.ProtWrite, IoUring.MapShared | IoUring.MapPopulate, _ringFd, offset);
        if (p == (void*)-1)
            throw new IOException($"mmap of the io_uring region at 0x{offset:x} failed: {LibC.ErrorText(Marshal.GetLastPInvokeError())}");
        return (byte*)p;
    }

    private bool RegisterBuffers(out string? reason)
    {
        var registration = new IoUring.BufReg { RingAddr = (ulong)_bufferRing, RingEntries = (uint)_readBuffers, Bgid = BufferGroup };
        if (IoUring.Register(_ringFd, IoUring.RegisterPbufRing, &registration, 1) < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            reason = $"registering the provided-buffer ring failed: {LibC.ErrorText(errno)} ({LibC.ErrorName(errno)})";
            return false;
        }
        for (int i = 0; i < _readBuffers; i++)
            ProvideBuffer(i);
        PublishBuffers();
        reason = null;
        return true;
    }

    /// <summary>Serializes submission-queue work with direct writes from other threads.</summary>
    internal object Gate => _gate;

    /// <summary>True on the thread that last called <see cref="TryRead"/>: its writes may queue.</summary>
    internal bool OnReaderThread => _readerThread == Environment.CurrentManagedThreadId;

    /// <summary>Write completions that reported an error (the packet was not sent).</summary>
    internal long WriteErrors => Interlocked.Read(ref _writeErrors);

    /// <summary>The errno of the last failed queued write (0 when none failed).</summary>
    internal int LastWriteError => _lastWriteError;

    /// <summary>io_uring_enter calls made so far.</summary>
    internal long Enters => Interlocked.Read(ref _enters);

    /// <inheritdoc/>
    public override bool IsInvalid => handle == -1;

    // ------------------------------------------------------------------------------------------
    // Submission side (under _gate)
    // ------------------------------------------------------------------------------------------

    private IoUring.Sqe* NextSqe()
    {
        if (_sqLocalTail - Volatile.Read(ref *_sqHead) >= SqEntries)
            Submit(); // the queue is full: hand it over first
        var sqe = &_sqes[_sqLocalTail & _sqMask];
        *sqe = default;
        return sqe;
    }

    private void Publish()
    {
        _sqLocalTail++;
        Volatile.Write(ref *_sqTail, _sqLocalTail);
    }

    // Entries queued that the kernel has not consumed yet: the SQ head is the truth, whoever
    // entered last and however that enter ended.
    private uint Unsubmitted => _sqLocalTail - Volatile.Read(ref *_sqHead);

    /// <summary>Hands every queued entry to the kernel (one io_uring_enter). Call under <see cref="Gate"/>.</summary>
    internal void Submit()
    {
        // EINTR before the kernel took everything: go again (the entries must not wait).
        for (int tries = 0; tries < 8 && Unsubmitted > 0; tries++)
            Enter(Unsubmitted, 0, 0, null);
    }

    // One io_uring_enter; 0, or the errno of an interruption, timeout or transient refusal.
    private int Enter(uint toSubmit, uint minComplete, uint flags, IoUring.GetEventsArg* arg)
    {
        Interlocked.Increment(ref _enters);
        int n = IoUring.Enter(_ringFd, toSubmit, minComplete, flags, arg, arg is null ? 0 : (nuint)sizeof(IoUring.GetEventsArg));
        if (n >= 0)
            return 0;
        int errno = Marshal.GetLastPInvokeError();
        if (errno == LibC.EINTR || errno == IoUring.ETIME || errno == LibC.EAGAIN || errno == LibC.EBUSY)
            return errno;
        throw TunDeviceException.For("io_uring_enter", errno);
    }

    private void ArmRead()
    {
        var sqe = NextSqe();
        sqe->Opcode = IoUring.OpReadMultishot;
        sqe->Flags = IoUring.SqeBufferSelect;
        sqe->Fd = _tunFd;
        sqe->BufGroup = BufferGroup;
        sqe->UserData = KindRead;
        Publish();
        _readArmed = true;
    }

    private void ArmWake()
    {
        var sqe = NextSqe();
        sqe->Opcode = IoUring.OpPollAdd;
        sqe->Fd = _wakeFd;
        sqe->OpFlags = (uint)LibC.POLLIN;
        sqe->UserData = KindWake;
        Publish();
        _wakeArmed = true;
    }

    /// <summary>
    /// Queues one packet (its virtio-net header, when the device has one, in
    /// <paramref name="header"/>) for the next submission. False when it cannot be queued
    /// (longer than a slot, or every slot in flight): write it directly instead.
    /// Call under <see cref="Gate"/> on the reader thread.
    /// </summary>
    internal bool TryQueueWrite(ReadOnlySpan<byte> header, ReadOnlySpan<byte> packet)
    {
        int total = header.Length + packet.Length;
        if (total > _writeSlotSize)
            return false;
        if (_freeCount == 0)
        {
            // Submitting completes the queued writes inline; their completions free the slots.
            Submit();
            ReapWriteCompletions();
            if (_freeCount == 0)
                return false;
        }
        int slot = _freeWrites[--_freeCount];
        byte* at = _writeMemory + (nint)slot * _writeSlotSize;
        header.CopyTo(new Span<byte>(at, header.Length));
        packet.CopyTo(new Span<byte>(at + header.Length, packet.Length));
        var sqe = NextSqe();
        sqe->Opcode = IoUring.OpWrite;
        sqe->Fd = _tunFd;
        sqe->Addr = (ulong)at;
        sqe->Len = (uint)total;
        sqe->UserData = KindWrite | (uint)slot;
        Publish();
        if (Unsubmitted >= FlushThreshold)
            Submit();
        return true;
    }

    // ------------------------------------------------------------------------------------------
    // Completion side (reader thread)
    // ------------------------------------------------------------------------------------------

    private void ProvideBuffer(int id)
    {
        var entry = &_bufferRing[_bufferTail & (_readBuffers - 1)];
        entry->Addr = (ulong)(_readMemory + (nint)id * _readBufferSize);
        entry->Len = (uint)_readBufferSize;
        entry->Bid = (ushort)id;
        _bufferTail++;
    }

    // The ring's tail is the resv field of entry 0; the kernel reads it with acquire semantics.
    private void PublishBuffers() => Volatile.Write(ref _bufferRing[0].Resv, _bufferTail);

    private void CompleteWrite(in IoUring.Cqe cqe)
    {
        _freeWrites[_freeCount++] = (int)(cqe.UserData & 0xFFFF);
        if (cqe.Res < 0)
        {
            Interlocked.Increment(ref _writeErrors);
            _lastWriteError = -cqe.Res;
        }
    }

    // Frees the slots of completed writes; stops at the first other completion, which the
    // reader must see in order. Under _gate.
    private void ReapWriteCompletions()
    {
        uint head = *_cqHead;
        while (head != Volatile.Read(ref *_cqTail))
        {
            var cqe = _cqes[head & _cqMask];
            if ((cqe.UserData & KindMask) != KindWrite)
                break;
            CompleteWrite(cqe);
            head++;
            Volatile.Write(ref *_cqHead, head);
        }
    }

    /// <summary>What <see cref="TryRead"/> found.</summary>
    internal enum ReadResult
    {
        /// <summary>A packet was copied out.</summary>
        Packet,

        /// <summary>The wake eventfd was signalled (and reset).</summary>
        Woken,

        /// <summary>Nothing arrived within the time.</summary>
        TimedOut,

        /// <summary>The read failed; the errno is in the out parameter.</summary>
        Failed,
    }

    /// <summary>
    /// Takes the next packet: from a completion already in the ring, else after one enter that
    /// also submits the queued writes, else (with time left) waiting in io_uring_enter until a
    /// packet, a wake or the timeout. Queued writes are always submitted before a wait.
    /// </summary>
    /// <param name="buffer">Where the packet goes (cut to its length if longer).</param>
    /// <param name="millisecondsTimeout">0: do not wait; -1: no limit.</param>
    /// <param name="length">The packet's length (header not counted).</param>
    /// <param name="header">Receives the virtio-net header bytes (when the device has one).</param>
    /// <param name="errno">For <see cref="ReadResult.Failed"/>, the read's error.</param>
    internal ReadResult TryRead(Span<byte> buffer, int millisecondsTimeout, out int length, Span<byte> header, out int errno) =>
        Read(buffer, inPlace: false, millisecondsTimeout, out length, header, out _, out errno);

    /// <summary>
    /// <see cref="TryRead"/> without the copy: <paramref name="packet"/> points into the ring's
    /// buffer (after the virtio-net header, which goes to <paramref name="header"/>), valid until
    /// this reader's next call, which hands the buffer back to the kernel.
    /// </summary>
    internal ReadResult TryReadInPlace(int millisecondsTimeout, out int length, Span<byte> header, out byte* packet, out int errno) =>
        Read(default, inPlace: true, millisecondsTimeout, out length, header, out packet, out errno);

    private ReadResult Read(Span<byte> buffer, bool inPlace, int millisecondsTimeout, out int length, Span<byte> header, out byte* packet, out int errno)
    {
        _readerThread = Environment.CurrentManagedThreadId;
        length = 0;
        errno = 0;
        packet = null;
        long deadline = millisecondsTimeout == Timeout.Infinite ? long.MaxValue : Environment.TickCount64 + millisecondsTimeout;
        bool entered = false;
        lock (_gate)
        {
            if (_heldBuffer >= 0)
            {
                // The caller is done with the packet it read in place.
                ProvideBuffer(_heldBuffer);
                PublishBuffers();
                _heldBuffer = -1;
            }

            // Writes the last packet caused (its ACK, say) go out before the next packet is
            // taken, so batching never delays them behind other packets' processing; the same
            // enter collects whatever has arrived meanwhile.
            if (Unsubmitted > 0)
            {
                Enter(Unsubmitted, 0, IoUring.EnterGetEvents, null);
                entered = true;
            }
        }
        while (true)
        {
            bool woken = false;
            lock (_gate)
            {
                uint head = *_cqHead;
                while (head != Volatile.Read(ref *_cqTail))
                {
                    var cqe = _cqes[head & _cqMask];
                    head++;
                    Volatile.Write(ref *_cqHead, head);
                    switch (cqe.UserData & KindMask)
                    {
                        case KindWrite:
                            CompleteWrite(cqe);
                            break;
                        case KindWake:
                            _wakeArmed = false;
                            ulong counter;
                            LibC.Read(_wakeFd, (byte*)&counter, sizeof(ulong)); // reset the eventfd to 0
                            woken = true;
                            break;
                        case KindRead:
                            if ((cqe.Flags & IoUring.CqeMore) == 0)
                                _readArmed = false;
                            if ((cqe.Flags & IoUring.CqeBuffer) != 0)
                            {
                                int id = (int)(cqe.Flags >> IoUring.CqeBufferShift);
                                if (cqe.Res > 0 && inPlace)
                                {
                                    length = InPlace(id, cqe.Res, header, out packet);
                                    _heldBuffer = id;
                                    return ReadResult.Packet;
                                }
                                if (cqe.Res > 0)
                                    length = CopyOut(id, cqe.Res, buffer, header);
                                ProvideBuffer(id);
                                PublishBuffers();
                                if (cqe.Res > 0)
                                    return ReadResult.Packet;
                            }
                            // ENOBUFS (every buffer was taken) and ECANCELED (the arming thread
                            // exited) only need the read armed again; anything else is the
                            // device's failure, reported like a failed read(2).
                            if (cqe.Res < 0 && cqe.Res != -IoUring.ENOBUFS && cqe.Res != -IoUring.ECANCELED && cqe.Res != -LibC.EAGAIN)
                            {
                                errno = -cqe.Res;
                                return ReadResult.Failed;
                            }
                            break;
                    }
                }

                if (!_readArmed)
                    ArmRead();
                if (!_wakeArmed)
                    ArmWake();
                if (woken)
                {
                    Submit();
                    return ReadResult.Woken;
                }

                long remaining = deadline == long.MaxValue ? long.MaxValue : deadline - Environment.TickCount64;
                if (remaining <= 0)
                {
                    // Nothing completed: collect what the kernel has ready (one enter, which also
                    // sends the queued writes), but only when there is something to collect.
                    bool pending = Unsubmitted > 0 || (Volatile.Read(ref *_sqFlags) & (IoUring.SqTaskRun | IoUring.SqCqOverflow)) != 0;
                    if (!pending || entered)
                    {
                        Submit();
                        return ReadResult.TimedOut;
                    }
                    entered = true;
                    Enter(Unsubmitted, 0, IoUring.EnterGetEvents, null);
                    continue;
                }
            }

            // Wait outside the gate, so that other threads can still write. The queued entries
            // go in with this same enter.
            long wait = deadline == long.MaxValue ? 1000 : Math.Min(deadline - Environment.TickCount64, 1000);
            if (wait <= 0)
                continue;
            IoUring.Timespec ts = new() { Seconds = wait / 1000, Nanoseconds = wait % 1000 * 1_000_000 };
            IoUring.GetEventsArg arg = new() { SigMaskSize = 8, Timespec = (ulong)&ts };
            uint toSubmit;
            lock (_gate)
                toSubmit = Unsubmitted;
            int interrupted = Enter(toSubmit, 1, IoUring.EnterGetEvents | IoUring.EnterExtArg, &arg);
            entered = true;
            if (interrupted == IoUring.ETIME && deadline != long.MaxValue && Environment.TickCount64 >= deadline)
                deadline = Environment.TickCount64; // the next pass collects and returns TimedOut
        }
    }

    private int InPlace(int id, int bytes, Span<byte> header, out byte* packet)
    {
        byte* at = _readMemory + (nint)id * _readBufferSize;
        if (_headerLength > 0)
            new ReadOnlySpan<byte>(at, Math.Min(_headerLength, bytes)).CopyTo(header);
        packet = at + _headerLength;
        return Math.Max(0, bytes - _headerLength);
    }

    private int CopyOut(int id, int bytes, Span<byte> buffer, Span<byte> header)
    {
        byte* at = _readMemory + (nint)id * _readBufferSize;
        int packet = Math.Max(0, bytes - _headerLength);
        if (_headerLength > 0)
            new ReadOnlySpan<byte>(at, Math.Min(_headerLength, bytes)).CopyTo(header);
        int n = Math.Min(packet, buffer.Length);
        new ReadOnlySpan<byte>(at + _headerLength, n).CopyTo(buffer);
        return n;
    }

    // ------------------------------------------------------------------------------------------
    // Teardown
    // ------------------------------------------------------------------------------------------

    /// <summary>
    /// Runs when the last user lets go: cancels whatever is in flight (synchronously, so that no
    /// request still holds the TUN file or writes into our buffers), then unmaps and frees.
    /// </summary>
    protected override bool ReleaseHandle()
    {
        var cancel = new IoUring.SyncCancelReg
        {
            Fd = -1,
            Flags = IoUring.CancelAllAny,
            Timeout = new IoUring.Timespec { Seconds = 1 },
        };
        if (IoUring.Register(_ringFd, IoUring.RegisterSyncCancel, &cancel, 1) < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            // ENOENT: nothing was in flight.
            _cancelFailed = errno != LibC.ENOENT;
        }
        IoUring.Munmap(_sqes, _sqesSize);
        if (_cqRing != _sqRing)
            IoUring.Munmap(_cqRing, _cqRingSize);
        IoUring.Munmap(_sqRing, _sqRingSize);
        bool closed = LibC.Close(_ringFd) == 0;
        // A request the kernel could not cancel might still write into the buffers: leak them
        // rather than let it write into freed memory.
        if (!_cancelFailed)
        {
            NativeMemory.AlignedFree(_readMemory);
            NativeMemory.AlignedFree(_bufferRing);
            NativeMemory.AlignedFree(_writeMemory);
        }
        return closed;
    }
}
