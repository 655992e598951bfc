using System.Runtime.InteropServices;
using System.Text;
using NetStack.Core.Wire;
using NetStack.Interop;

namespace NetStack.Device;

/// <summary>
/// A Linux TUN interface: the kernel hands it the IP packets it routes to the interface, and takes
/// the IP packets written to it as if they had arrived from a network.
/// </summary>
/// <remarks>
/// <para>
/// The device runs in <c>IFF_TUN | IFF_NO_PI</c> mode: every read returns exactly one whole IPv4 or
/// IPv6 packet, every write injects exactly one, with no link-layer or packet-information header
/// (Documentation/networking/tuntap.rst).
/// </para>
/// <para>
/// Opened with a virtio-net header (IFF_VNET_HDR, see <see cref="Create(string, bool)"/>), every
/// packet in both directions is preceded by a 10-byte <see cref="VirtioNetHeader"/>, and
/// <see cref="SetOffloads"/> can let the kernel hand the reader partial checksums and 64 KiB TCP
/// super-segments. The calls taking a <see cref="VirtioNetHeader"/> read and write it; the plain
/// <see cref="TryRead(Span{byte}, int, out int)"/> and <see cref="Write(ReadOnlySpan{byte})"/>
/// drop it and write an empty one, so such a device still works for a reader that ignores
/// offloads as long as none were set.
/// </para>
/// <para>
/// Threading: one thread reads (the engine loop), any thread may write, and any thread may call
/// <see cref="Wake"/> or <see cref="Dispose"/>. A read waits in poll(2) on the TUN descriptor and on
/// an eventfd; <see cref="Dispose"/> signals the eventfd, so a blocked read ends at once with
/// <see cref="ObjectDisposedException"/>, and the descriptors are closed only after it has
/// left its system calls.
/// </para>
/// <para>
/// Lifetime: a device made by <see cref="Create(string)"/> is not persistent (we never set TUNSETPERSIST),
/// so the kernel deletes the interface, with its addresses and routes, when
/// <see cref="Dispose"/> closes the descriptor. A device opened by <see cref="Attach(string)"/> is an
/// existing persistent interface and stays after <see cref="Dispose"/>.
/// </para>
/// <para>
/// All of this needs CAP_NET_ADMIN in the network namespace that owns the interface.
/// </para>
/// </remarks>
public sealed unsafe partial class TunDevice : IDisposable
{
    /// <summary>The longest interface name Linux accepts, in bytes: IFNAMSIZ (16) less the NUL.</summary>
    public const int MaxNameLength = 15;

    /// <summary>The template <see cref="Create(string)"/> uses when given none: the kernel picks tun0, tun1, ...</summary>
    public const string DefaultTemplate = "tun%d";

    /// <summary>The clone device every TUN interface is opened through.</summary>
    private const string ClonePath = "/dev/net/tun";

    // linux/if_tun.h. TUNSETIFF = _IOW('T', 202, int): direction write (1 << 30), size 4 (<< 16),
    // type 'T' (0x54 << 8), number 202 (0xCA), the same encoding on x86_64 and arm64.
    private const nuint TUNSETIFF = 0x400454CA;
    private const short IFF_TUN = 0x0001;
    private const short IFF_TAP = 0x0002;
    private const short IFF_NO_PI = 0x1000;
    private const short IFF_VNET_HDR = 0x4000;
    // One interface, several queues: each TUNSETIFF with it on a new descriptor adds a queue, and
    // the kernel spreads the packets it sends among them (tun.c tun_select_queue).
    private const short IFF_MULTI_QUEUE = 0x0100;

    // _IOW('T', 208, unsigned int): the argument is the TUN_F_* mask itself, not a pointer.
    private const nuint TUNSETOFFLOAD = 0x400454D0;

    // _IOW('T', 216, int) and _IOW('T', 220, int): both take a pointer to an int.
    private const nuint TUNSETVNETHDRSZ = 0x400454D8;
    private const nuint TUNSETVNETLE = 0x400454DC;

    // Makes TUNSETIFF fail with EBUSY when an interface of that name exists, instead of attaching
    // to it: "create" must not silently take over someone else's persistent device.
    private const short IFF_TUN_EXCL = unchecked((short)0x8000);

    private readonly FileDescriptorHandle _tun;
    private readonly FileDescriptorHandle _wake;
    private int _disposed;

    // Batched reads and writes through io_uring (see EnableIoUring); null: one system call per packet.
    private TunRing? _ring;

    private TunDevice(FileDescriptorHandle tun, FileDescriptorHandle wake, string name, bool created, bool virtioNetHeader)
    {
        _tun = tun;
        _wake = wake;
        Name = name;
        IsOwned = created;
        HasVirtioNetHeader = virtioNetHeader;
        InterfaceIndex = (int)LibC.IfNameToIndex(name);
    }

    /// <summary>
    /// True when the device was opened with a virtio-net header (IFF_VNET_HDR) in front of every
    /// packet, which offloads need.
    /// </summary>
    public bool HasVirtioNetHeader { get; }

    /// <summary>The offloads the kernel accepted in the last <see cref="SetOffloads"/> (None before).</summary>
    public TunOffloads Offloads { get; private set; }

    /// <summary>The interface name the kernel gave the device, e.g. "tun0" (a template's number filled in).</summary>
    public string Name { get; }

    /// <summary>The kernel's interface index (ifindex) of the device, as rtnetlink and <c>ip link</c> use it.</summary>
    public int InterfaceIndex { get; private init; }

    /// <summary>
    /// True when this object created the interface, which then disappears on <see cref="Dispose"/>;
    /// false when it attached to an existing persistent interface, which stays.
    /// </summary>
    public bool IsOwned { get; }

    /// <summary>
    /// The TUN file descriptor, for callers that poll it themselves. The device keeps ownership:
    /// do not close it, and do not use it after <see cref="Dispose"/>.
    /// </summary>
    public SafeHandle Handle => _tun;

    /// <summary>The TUN file descriptor number (see <see cref="Handle"/>), or -1 after <see cref="Dispose"/>.</summary>
    public int FileDescriptor => _tun.IsClosed ? -1 : _tun.Fd;

    /// <summary>
    /// The interface's current MTU in bytes, read from the kernel on every call (it can be changed
    /// with <see cref="KernelLink.SetMtu"/> or <c>ip link set mtu</c>). No packet read from the
    /// device is longer than this.
    /// </summary>
    /// <exception cref="TunDeviceException">The kernel could not report it (the interface was deleted).</exception>
    public int Mtu
    {
        get
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            if (_foreignMtu is { } known)
                return known;
            int errno = InterfaceRequest.Query(Name, InterfaceRequest.SIOCGIFMTU, out int mtu);
            if (errno != 0)
                throw TunDeviceException.For($"SIOCGIFMTU on '{Name}'", errno);
            return mtu;
        }
    }

    /// <summary>
    /// Creates a new TUN interface. The kernel deletes it again when the device is disposed.
    /// </summary>
    /// <param name="nameOrTemplate">
    /// An exact name ("ns0"), or a template with one <c>%d</c> ("ns%d") for which the kernel picks
    /// the lowest free number; <see cref="Name"/> then holds the result. At most
    /// <see cref="MaxNameLength"/> bytes of UTF-8, no '/', ':', whitespace or other '%', not "." or "..".
    /// </param>
    /// <exception cref="ArgumentException">The name is empty, too long or contains a forbidden character.</exception>
    /// <exception cref="TunDeviceException">
    /// /dev/net/tun is missing (ENOENT: load the tun module), the caller lacks CAP_NET_ADMIN
    /// (EPERM/EACCES), or an interface of that name already exists (EBUSY).
    /// </exception>
    public static TunDevice Create(string nameOrTemplate = DefaultTemplate) => Create(nameOrTemplate, virtioNetHeader: false);

    /// <summary>
    /// Creates a new TUN interface, with a virtio-net header in front of every packet when
    /// <paramref name="virtioNetHeader"/> is true (then call <see cref="SetOffloads"/>).
    /// </summary>
    /// <param name="nameOrTemplate">An exact name or a template with one <c>%d</c> (see <see cref="Create(string)"/>).</param>
    /// <param name="virtioNetHeader">Open with IFF_VNET_HDR.</param>
    /// <exception cref="ArgumentException">The name is empty, too long or contains a forbidden character.</exception>
    /// <exception cref="TunDeviceException">As for <see cref="Create(string)"/>.</exception>
    public static TunDevice Create(string nameOrTemplate, bool virtioNetHeader)
    {
        ValidateName(nameOrTemplate, allowTemplate: true);
        return Open(nameOrTemplate, create: true, virtioNetHeader);
    }

    /// <summary>
    /// Creates a TAP interface (<c>IFF_TAP | IFF_NO_PI</c>): like <see cref="Create(string)"/>, but every read
    /// and write is one whole Ethernet frame (no FCS) instead of an IP packet, so the caller speaks
    /// the link layer itself (see <see cref="Engine.EthernetPacketDevice"/>). <see cref="IsTap"/> is true.
    /// </summary>
    /// <param name="nameOrTemplate">An exact name or a template with one <c>%d</c>, as for <see cref="Create(string)"/>.</param>
    /// <exception cref="ArgumentException">The name is empty, too long or contains a forbidden character.</exception>
    /// <exception cref="TunDeviceException">As for <see cref="Create(string)"/>.</exception>
    public static TunDevice CreateTap(string nameOrTemplate = "tap%d") => CreateTap(nameOrTemplate, virtioNetHeader: false);

    /// <summary>
    /// Creates a TAP interface, with a virtio-net header in front of every frame when
    /// <paramref name="virtioNetHeader"/> is true (then call <see cref="SetOffloads"/>); its
    /// csum_start and hdr_len count from the start of the Ethernet frame.
    /// </summary>
    /// <param name="nameOrTemplate">An exact name or a template with one <c>%d</c>, as for <see cref="Create(string)"/>.</param>
    /// <param name="virtioNetHeader">Open with IFF_VNET_HDR.</param>
    /// <exception cref="ArgumentException">The name is empty, too long or contains a forbidden character.</exception>
    /// <exception cref="TunDeviceException">As for <see cref="Create(string)"/>.</exception>
    public static TunDevice CreateTap(string nameOrTemplate, bool virtioNetHeader)
    {
        ValidateName(nameOrTemplate, allowTemplate: true);
        return Open(nameOrTemplate, create: true, virtioNetHeader, tap: true);
    }

    /// <summary>True for a TAP device (Ethernet frames), false for TUN (IP packets).</summary>
    public bool IsTap { get; private init; }

    /// <summary>
    /// Attaches to an existing persistent TUN interface (one made with <c>ip tuntap add mode tun</c>
    /// or TUNSETPERSIST). Disposing the device detaches but leaves the interface in place.
    /// </summary>
    /// <param name="name">The exact interface name.</param>
    /// <exception cref="ArgumentException">The name is empty, too long or contains a forbidden character.</exception>
    /// <exception cref="TunDeviceException">
    /// No interface has that name (ENODEV), it is not a TUN interface (EINVAL), another process has
    /// it open (EBUSY), or the caller lacks CAP_NET_ADMIN or is not its owner (EPERM).
    /// </exception>
    public static TunDevice Attach(string name) => Attach(name, virtioNetHeader: false);

    /// <summary>
    /// Attaches to an existing persistent TUN interface, with a virtio-net header in front of
    /// every packet when <paramref name="virtioNetHeader"/> is true.
    /// </summary>
    /// <param name="name">The exact interface name.</param>
    /// <param name="virtioNetHeader">Open with IFF_VNET_HDR.</param>
    /// <exception cref="ArgumentException">The name is empty, too long or contains a forbidden character.</exception>
    /// <exception cref="TunDeviceException">As for <see cref="Attach(string)"/>.</exception>
    public static TunDevice Attach(string name, bool virtioNetHeader) => AttachExisting(name, virtioNetHeader, tap: false);

    /// <summary>
    /// Attaches to an existing persistent TAP
    /// interface (<c>ip tuntap add mode tap</c>); otherwise as <see cref="Attach(string)"/>.
    /// </summary>
    /// <param name="name">The exact interface name.</param>
    /// <exception cref="ArgumentException">The name is empty, too long or contains a forbidden character.</exception>
    /// <exception cref="TunDeviceException">As for <see cref="Attach(string)"/>.</exception>
    public static TunDevice AttachTap(string name) => AttachExisting(name, virtioNetHeader: false, tap: true);

    /// <summary>
    /// Attaches to an existing persistent TAP interface, with a virtio-net header in front of
    /// every frame when <paramref name="virtioNetHeader"/> is true.
    /// </summary>
    /// <param name="name">The exact interface name.</param>
    /// <param name="virtioNetHeader">Open with IFF_VNET_HDR.</param>
    /// <exception cref="ArgumentException">The name is empty, too long or contains a forbidden character.</exception>
    /// <exception cref="TunDeviceException">As for <see cref="Attach(string)"/>.</exception>
    public static TunDevice AttachTap(string name, bool virtioNetHeader) => AttachExisting(name, virtioNetHeader, tap: true);

    private static TunDevice AttachExisting(string name, bool virtioNetHeader, bool tap)
    {
        ValidateName(name, allowTemplate: false);
        // TUNSETIFF without IFF_TUN_EXCL would create a missing interface; attaching must not.
        if (LibC.IfNameToIndex(name) == 0)
        {
            throw new TunDeviceException(
                "attach", LibC.ENODEV,
                $"Cannot attach to TUN interface '{name}': no interface has that name in this network " +
                "namespace (ENODEV). Create it first (`ip tuntap add dev NAME mode tun`) or use TunDevice.Create.");
        }

        return Open(name, create: false, virtioNetHeader, tap);
    }

    /// <summary>
    /// Checks a name the way the kernel's dev_valid_name() and dev_alloc_name() will, so that a bad
    /// name is an <see cref="ArgumentException"/> before any system call.
    /// </summary>
    private static void ValidateName(string name, bool allowTemplate)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (NameProblem(name, allowTemplate) is { } problem)
            throw new ArgumentException(problem, nameof(name));
    }

    /// <summary>What is wrong with an interface name (or template, when allowed), or null.</summary>
    internal static string? NameProblem(string name, bool allowTemplate)
    {
        if (name.Length == 0)
            return "An interface name cannot be empty.";
        int bytes = Encoding.UTF8.GetByteCount(name);
        if (bytes > MaxNameLength)
            return $"Interface name '{name}' is {bytes} bytes long; Linux allows at most {MaxNameLength}.";
        if (name is "." or "..")
            return $"'{name}' is not a valid interface name.";
        foreach (char c in name)
        {
            if (c is '/' or ':' or '\0' || char.IsWhiteSpace(c))
                return $"Interface name '{name}' contains '{c}'; names cannot contain '/', ':', NUL or whitespace.";
        }

        int percent = name.IndexOf('%');
        if (percent >= 0)
        {
            bool oneNumber = percent + 1 < name.Length && name[percent + 1] == 'd'
                && name.IndexOf('%', percent + 2) < 0;
            if (!allowTemplate || !oneNumber)
            {
                return allowTemplate
                    ? $"Interface name template '{name}' must contain '%' only once, as '%d'."
                    : $"Interface name '{name}' contains '%'; templates are for TunDevice.Create only.";
            }
        }
        return null;
    }

    /// <summary>
    /// Opens a multi-queue TUN interface (IFF_MULTI_QUEUE) with <paramref name="queues"/>
    /// descriptors, one per queue: the first creates it (or attaches to an existing persistent
    /// multi-queue interface when <paramref name="create"/> is false), the others attach to it by
    /// its actual name. The kernel deletes a created interface when the last queue is closed.
    /// </summary>
    internal static TunDevice[] OpenQueues(string nameOrTemplate, bool create, bool virtioNetHeader, int queues)
    {
        if (!create && LibC.IfNameToIndex(nameOrTemplate) == 0)
        {
            throw new TunDeviceException(
                "attach", LibC.ENODEV,
                $"Cannot attach to TUN interface '{nameOrTemplate}': no interface has that name in this network " +
                "namespace (ENODEV). Create it first (`ip tuntap add dev NAME mode tun multi_queue`).");
        }
        var devices = new TunDevice[queues];
        try
        {
            devices[0] = Open(nameOrTemplate, create, virtioNetHeader, tap: false, multiQueue: true);
            for (int i = 1; i < queues; i++)
                devices[i] = Open(devices[0].Name, create: false, virtioNetHeader, tap: false, multiQueue: true);
        }
        catch
        {
            foreach (var d in devices)
                d?.Dispose();
            throw;
        }
        return devices;
    }

    private static TunDevice Open(string name, bool create, bool virtioNetHeader, bool tap = false, bool multiQueue = false)
    {
        // Non-blocking, so that a read after poll() can never block (another reader may have taken
        // the packet); waiting happens in poll() only, where Dispose can interrupt it.
        int fd = LibC.Open(ClonePath, LibC.O_RDWR | LibC.O_NONBLOCK | LibC.O_CLOEXEC);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw TunDeviceException.For(
                $"open {ClonePath}", errno,
                errno switch
                {
                    LibC.ENOENT or LibC.ENXIO or LibC.ENODEV =>
                        "The TUN driver is not available: load the tun module (`modprobe tun`), or run where " +
                        "/dev/net/tun exists (in a container: pass --device /dev/net/tun).",
                    // The device node's file mode decides this, before any capability check: it is
                    // usually crw-rw-rw-, but some systems make it root-only, which also shuts out
                    // root inside a user namespace.
                    LibC.EACCES or LibC.EPERM =>
                        $"This user may not open {ClonePath} (see `ls -l {ClonePath}`; it is usually mode 0666): " +
                        "run as root, or make it accessible (chmod 0666). Creating an interface also needs " +
                        "CAP_NET_ADMIN: root, or inside `unshare --user --map-root-user --net`.",
                    _ => null,
                });
        }

        var tun = new FileDescriptorHandle(fd);
        try
        {
            short flags = (short)((tap ? IFF_TAP : IFF_TUN) | IFF_NO_PI | (create ? IFF_TUN_EXCL : 0) | (virtioNetHeader ? IFF_VNET_HDR : 0) | (multiQueue ? IFF_MULTI_QUEUE : 0));
            InterfaceRequest request = InterfaceRequest.For(name, flags);
            if (LibC.Ioctl(fd, TUNSETIFF, &request) < 0)
                throw SetInterfaceError(name, create, Marshal.GetLastPInvokeError());

            string actual = request.NameText;
            if (virtioNetHeader)
            {
                // The plain struct virtio_net_hdr (10 bytes): what the kernel assumes, said
                // explicitly so that a persistent device set otherwise by someone else agrees.
                int size = VirtioNet.HeaderLength;
                if (LibC.Ioctl(fd, TUNSETVNETHDRSZ, &size) < 0)
                    throw TunDeviceException.For($"TUNSETVNETHDRSZ '{actual}'", Marshal.GetLastPInvokeError());
                // The codec is little-endian (virtio 1.x); a legacy header is in host order, so a
                // big-endian host must ask for little-endian explicitly.
                if (!BitConverter.IsLittleEndian)
                {
                    int on = 1;
                    if (LibC.Ioctl(fd, TUNSETVNETLE, &on) < 0)
                        throw TunDeviceException.For($"TUNSETVNETLE '{actual}'", Marshal.GetLastPInvokeError());
                }
            }

            int wakeFd = LibC.EventFd(0, LibC.EFD_NONBLOCK | LibC.EFD_CLOEXEC);
            if (wakeFd < 0)
                throw TunDeviceException.For("eventfd", Marshal.GetLastPInvokeError());
            return new TunDevice(tun, new FileDescriptorHandle(wakeFd), actual, create, virtioNetHeader) { IsTap = tap };
        }
        catch
        {
            // Closing the descriptor of a non-persistent interface deletes it again.
            tun.Dispose();
            throw;
        }
    }

    private static TunDeviceException SetInterfaceError(string name, bool create, int errno)
    {
        string? advice = errno switch
        {
            LibC.EBUSY when create =>
                $"An interface named '{name}' already exists: choose another name (NetStackOptions.TunName), or a " +
                "template such as \"tun%d\"; to use that interface (made with `ip tuntap add ... user ...`), set " +
                "NetStackOptions.AttachExisting = true.",
            LibC.EBUSY =>
                $"TUN interface '{name}' is already open by another process or device object (another NetworkStack?); close that first.",
            LibC.EEXIST => $"An interface named '{name}' already exists: choose another name (NetStackOptions.TunName), " +
                "or set NetStackOptions.AttachExisting = true to use it.",
            LibC.EINVAL when !create =>
                $"'{name}' exists but is not a TUN interface (perhaps a TAP or another kind of device), or its multi_queue flag differs from NetStackOptions.Queues > 1.",
            LibC.EINVAL => $"The kernel rejected the interface name '{name}'.",
            LibC.ENFILE => "The kernel could not allocate another interface number for the template.",
            _ => null,
        };
        return TunDeviceException.For($"TUNSETIFF '{name}'", errno, advice);
    }

    /// <summary>
    /// Asks the kernel for offloads (TUNSETOFFLOAD) and returns what it accepted, which
    /// <see cref="Offloads"/> then reports. An older kernel refuses flags it does not know with
    /// EINVAL (USO arrived in Linux 6.2): the request is retried without USO, then without TSO,
    /// then with nothing. <see cref="TunOffloads.None"/> turns every offload off again.
    /// </summary>
    /// <param name="wanted">The offloads to ask for. TSO and USO need <see cref="TunOffloads.Checksum"/>; USO4 and USO6 go together.</param>
    /// <returns>The offloads in force.</returns>
    /// <exception cref="InvalidOperationException">The device has no virtio-net header: offloads would leave the reader unable to tell a partial checksum or a super-segment.</exception>
    /// <exception cref="ArgumentException"><paramref name="wanted"/> has unknown bits, TSO/USO without Checksum, or only one of USO4/USO6.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    /// <exception cref="TunDeviceException">The kernel failed otherwise than by refusing the flags.</exception>
    public TunOffloads SetOffloads(TunOffloads wanted)
    {
        const TunOffloads all = TunOffloads.Checksum | TunOffloads.Tso4 | TunOffloads.Tso6 | TunOffloads.Uso4 | TunOffloads.Uso6;
        const TunOffloads uso = TunOffloads.Uso4 | TunOffloads.Uso6;
        const TunOffloads tso = TunOffloads.Tso4 | TunOffloads.Tso6;
        if ((wanted & ~all) != 0)
            throw new ArgumentException($"Unknown offload bits in {wanted}.", nameof(wanted));
        if (wanted != TunOffloads.None && !wanted.HasFlag(TunOffloads.Checksum))
            throw new ArgumentException("TSO and USO need checksum offload (TunOffloads.Checksum).", nameof(wanted));
        if ((wanted & uso) != 0 && (wanted & uso) != uso)
            throw new ArgumentException("USO4 and USO6 can only be asked for together (linux/drivers/net/tun.c).", nameof(wanted));
        if (!HasVirtioNetHeader)
            throw new InvalidOperationException($"TUN device '{Name}' was opened without a virtio-net header; offloads need one (Create(name, virtioNetHeader: true)).");
        bool added = false;
        try
        {
            _tun.DangerousAddRef(ref added);
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            ReadOnlySpan<TunOffloads> tries = [wanted, wanted & ~uso, wanted & ~(uso | tso), TunOffloads.None];
            foreach (var attempt in tries)
            {
                if (LibC.Ioctl(_tun.Fd, TUNSETOFFLOAD, (void*)(nuint)(uint)attempt) == 0)
                {
                    Offloads = attempt;
                    return attempt;
                }
                int errno = Marshal.GetLastPInvokeError();
                if (errno != LibC.EINVAL)
                    throw TunDeviceException.For($"TUNSETOFFLOAD {attempt} on '{Name}'", errno);
            }
            throw TunDeviceException.For($"TUNSETOFFLOAD on '{Name}'", LibC.EINVAL, "The kernel refused even to turn offloads off.");
        }
        finally
        {
            if (added)
                _tun.DangerousRelease();
        }
    }

    /// <summary>
    /// Switches the device to batched I/O through io_uring, if this kernel allows it: a multishot
    /// read keeps taking packets into a ring of buffers, and the reading thread's writes queue and
    /// go to the kernel together, so that one io_uring_enter moves many packets instead of one
    /// read(2) or write(2) each. Reads and writes keep their meaning: packets leave in the order
    /// written, a write queued by the reading thread goes out at its next read call at the latest
    /// (always before that call waits), and <see cref="Wake"/> and <see cref="Dispose"/> end a
    /// wait as before. Writes from other threads are sent at once, after the queued ones.
    /// </summary>
    /// <remarks>
    /// Needs Linux 6.7 or later (multishot reads into a provided-buffer ring) with io_uring
    /// enabled (<c>/proc/sys/kernel/io_uring_disabled</c> 0, or 1 for a member of its group).
    /// Otherwise nothing changes and the device keeps one system call per packet. Call it before
    /// the first read. A queued write that the kernel refuses is counted in
    /// <see cref="QueuedWriteErrors"/> instead of throwing (it fails after <see cref="Write(ReadOnlySpan{byte})"/> returned).
    /// </remarks>
    /// <param name="reason">Why io_uring is not used, when the result is false.</param>
    /// <returns>True when reads and writes now go through io_uring (also when they already did).</returns>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    public bool TryEnableIoUring(out string? reason)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        reason = null;
        if (_ring is not null)
            return true;
        using var held = Held.Of(_tun, _wake);
        // The longest read: a 64 KiB super-segment with offloads, else the MTU (at least
        // 1500), with room for an Ethernet header in TAP mode.
        int longest = HasVirtioNetHeader ? 65536 + 128 : Math.Max(Mtu, 1500) + 128;
        _ring = TunRing.TryCreate(_tun.Fd, _wake.Fd, HasVirtioNetHeader ? VirtioNet.HeaderLength : 0, longest, out reason);
        return _ring is not null;
    }

    /// <summary>
    /// In io_uring mode, reads the next packet without copying it: <paramref name="packet"/> is
    /// the packet inside the device's receive buffer, valid only until this thread's next read
    /// call on the device (which gives the buffer back to the kernel). Otherwise as
    /// <see cref="TryReadWithHeader"/>; the engine loop uses it to parse packets where the kernel
    /// put them.
    /// </summary>
    /// <param name="millisecondsTimeout">How long to wait: 0 to only check, <see cref="Timeout.Infinite"/> (-1) to wait without limit.</param>
    /// <param name="packet">The packet (empty when none was read).</param>
    /// <param name="header">The packet's virtio-net header (<see cref="VirtioNetHeader.None"/> without one).</param>
    /// <returns>True when a packet was read.</returns>
    /// <exception cref="InvalidOperationException">The device is not in io_uring mode.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The timeout is below -1.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed, or was disposed during the wait.</exception>
    /// <exception cref="TunDeviceException">The interface was deleted under the device, or the read failed.</exception>
    public bool TryReadInPlace(int millisecondsTimeout, out ReadOnlySpan<byte> packet, out VirtioNetHeader header)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(millisecondsTimeout, Timeout.Infinite);
        var ring = _ring ?? throw new InvalidOperationException($"TUN device '{Name}' is not in io_uring mode (TryEnableIoUring).");
        packet = default;
        header = VirtioNetHeader.None;
        byte* raw = stackalloc byte[VirtioNet.HeaderLength];
        using var held = Held.Of(_tun, _wake, ring);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var headerBytes = new Span<byte>(raw, HasVirtioNetHeader ? VirtioNet.HeaderLength : 0);
        var result = ring.TryReadInPlace(millisecondsTimeout, out int length, headerBytes, out byte* at, out int errno);
        if (!RingRead(result, errno))
            return false;
        // The buffer outlives this call: the ring hands it back at the next read.
        packet = new ReadOnlySpan<byte>(at, length);
        if (HasVirtioNetHeader)
        {
            var parsed = VirtioNet.parse(headerBytes);
            if (parsed.IsOk)
                header = parsed.ResultValue;
        }
        return true;
    }

    // A ring read's outcome: true for a packet; a failure throws; otherwise (timeout, wake-up)
    // false, or ObjectDisposedException when the device was disposed during the wait.
    private bool RingRead(TunRing.ReadResult result, int errno)
    {
        switch (result)
        {
            case TunRing.ReadResult.Packet:
                return true;
            case TunRing.ReadResult.Failed:
                throw ReadWriteError("read", errno);
            default:
                ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
                return false;
        }
    }

    /// <summary>True when reads and writes go through io_uring (see <see cref="TryEnableIoUring"/>).</summary>
    public bool UsesIoUring => _ring is not null;

    /// <summary>
    /// Queued writes the kernel refused after <see cref="Write(ReadOnlySpan{byte})"/> had returned
    /// (io_uring mode only; the packet was not sent). 0 otherwise.
    /// </summary>
    public long QueuedWriteErrors => _ring?.WriteErrors ?? 0;

    /// <summary>io_uring_enter calls made so far (io_uring mode only; 0 otherwise): with the packet counts, the system calls per packet.</summary>
    public long IoUringEnters => _ring?.Enters ?? 0;

    /// <summary>
    /// Reads one whole IP packet, waiting as long as it takes. A <see cref="Wake"/> call does not end
    /// this wait (use <see cref="TryRead(Span{byte}, int, out int)"/> for that).
    /// </summary>
    /// <param name="buffer">Where the packet goes. Make it at least <see cref="Mtu"/> bytes long:
    /// the kernel cuts a longer packet to the buffer's length and drops the rest.</param>
    /// <returns>The packet's length in bytes.</returns>
    /// <exception cref="ObjectDisposedException">The device is disposed, or was disposed during the wait.</exception>
    /// <exception cref="TunDeviceException">The interface was deleted under the device, or the read failed.</exception>
    public int Read(Span<byte> buffer)
    {
        int length;
        while (!TryRead(buffer, Timeout.Infinite, out length))
        {
        }

        return length;
    }

    /// <summary>
    /// Reads one whole IP packet if one arrives within <paramref name="millisecondsTimeout"/>.
    /// This is the call for an engine loop: wait for a packet until the next timer deadline, and
    /// let other threads cut the wait short with <see cref="Wake"/> when they queue work.
    /// </summary>
    /// <param name="buffer">Where the packet goes; at least <see cref="Mtu"/> bytes (see <see cref="Read"/>).</param>
    /// <param name="millisecondsTimeout">How long to wait: 0 to only check, <see cref="Timeout.Infinite"/> (-1) to wait without limit.</param>
    /// <param name="length">The packet's length in bytes, or 0 when no packet was read.</param>
    /// <returns>True when a packet was read; false when the time ran out or <see cref="Wake"/> was called.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The timeout is below -1.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed, or was disposed during the wait.</exception>
    /// <exception cref="TunDeviceException">The interface was deleted under the device, or the read failed.</exception>
    public bool TryRead(Span<byte> buffer, int millisecondsTimeout, out int length)
    {
        byte* ignored = stackalloc byte[VirtioNet.HeaderLength];
        return TryRead(buffer, millisecondsTimeout, out length, ignored);
    }

    /// <summary>
    /// <see cref="TryRead(Span{byte}, int, out int)"/> that also returns the packet's virtio-net
    /// header: what the kernel says about its checksum and segmentation. On a device without the
    /// header, and for a header this codec refuses (which then cannot vouch for anything), the
    /// header is <see cref="VirtioNetHeader.None"/>.
    /// </summary>
    /// <param name="buffer">Where the packet goes. With TSO offloads set, make it 65535 + 64 bytes: a super-segment is longer than the MTU.</param>
    /// <param name="millisecondsTimeout">How long to wait: 0 to only check, <see cref="Timeout.Infinite"/> (-1) to wait without limit.</param>
    /// <param name="length">The packet's length in bytes (the header not counted), or 0 when none was read.</param>
    /// <param name="header">The packet's virtio-net header.</param>
    /// <returns>True when a packet was read.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The timeout is below -1.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed, or was disposed during the wait.</exception>
    /// <exception cref="TunDeviceException">The interface was deleted under the device, or the read failed.</exception>
    public bool TryReadWithHeader(Span<byte> buffer, int millisecondsTimeout, out int length, out VirtioNetHeader header)
    {
        byte* raw = stackalloc byte[VirtioNet.HeaderLength];
        bool read = TryRead(buffer, millisecondsTimeout, out length, raw);
        header = VirtioNetHeader.None;
        if (read && HasVirtioNetHeader)
        {
            var parsed = VirtioNet.parse(new ReadOnlySpan<byte>(raw, VirtioNet.HeaderLength));
            if (parsed.IsOk)
                header = parsed.ResultValue;
        }
        return read;
    }

    private bool TryRead(Span<byte> buffer, int millisecondsTimeout, out int length, byte* virtioHeader)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(millisecondsTimeout, Timeout.Infinite);
        if (_ring is { } ring)
            return TryReadRing(ring, buffer, millisecondsTimeout, out length, virtioHeader);
        length = 0;
        LibC.IoVec* pieces = stackalloc LibC.IoVec[2];
        // Hold both descriptors open for the whole wait (see FileDescriptorHandle).
        using var held = Held.Of(_tun, _wake);
        long deadline = millisecondsTimeout == Timeout.Infinite
            ? long.MaxValue
            : Environment.TickCount64 + millisecondsTimeout;
        while (true)
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            fixed (byte* p = buffer)
            {
                nint n;
                if (HasVirtioNetHeader)
                {
                    pieces[0] = new LibC.IoVec { Base = virtioHeader, Length = VirtioNet.HeaderLength };
                    pieces[1] = new LibC.IoVec { Base = p, Length = (nuint)buffer.Length };
                    n = LibC.Readv(_tun.Fd, pieces, 2);
                    // The kernel always writes the whole header first.
                    if (n >= 0)
                        n = Math.Max(0, n - VirtioNet.HeaderLength);
                }
                else
                    n = LibC.Read(_tun.Fd, p, (nuint)buffer.Length);
                if (n >= 0)
                {
                    length = (int)n;
                    return true;
                }
            }

            int errno = Marshal.GetLastPInvokeError();
            if (errno != LibC.EAGAIN && errno != LibC.EINTR)
                throw ReadWriteError("read", errno);

            int wait = deadline == long.MaxValue
                ? Timeout.Infinite
                : (int)Math.Clamp(deadline - Environment.TickCount64, 0, int.MaxValue);
            if (wait == 0)
                return false;

            if (!WaitReadable(wait))
                return false;
        }
    }

    private bool TryReadRing(TunRing ring, Span<byte> buffer, int millisecondsTimeout, out int length, byte* virtioHeader)
    {
        // The ring's entries name both descriptors, and its memory must outlive the call.
        using var held = Held.Of(_tun, _wake, ring);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var header = new Span<byte>(virtioHeader, HasVirtioNetHeader ? VirtioNet.HeaderLength : 0);
        return RingRead(ring.TryRead(buffer, millisecondsTimeout, out length, header, out int errno), errno);
    }

    /// <summary>
    /// Waits in poll(2) until the TUN descriptor is readable (true) or the eventfd is signalled or
    /// the time runs out (false). Consumes a <see cref="Wake"/> signal; leaves a dispose signal set
    /// so that every waiter sees it.
    /// </summary>
    private bool WaitReadable(int millisecondsTimeout)
    {
        LibC.PollFd* fds = stackalloc LibC.PollFd[2];
        fds[0] = new LibC.PollFd { Fd = _tun.Fd, Events = LibC.POLLIN };
        fds[1] = new LibC.PollFd { Fd = _wake.Fd, Events = LibC.POLLIN };
        int ready = LibC.Poll(fds, 2, millisecondsTimeout);
        if (ready < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno == LibC.EINTR)
                return true; // go round again: the read tells whether anything came
            throw TunDeviceException.For("poll", errno);
        }

        if (ready == 0)
            return false;

        if ((fds[1].Revents & LibC.POLLIN) != 0)
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            ulong counter;
            LibC.Read(_wake.Fd, (byte*)&counter, sizeof(ulong)); // reset the eventfd counter to 0
            return false;
        }

        // POLLERR/POLLHUP: the interface went away; the read reports it as EBADFD.
        return true;
    }

    /// <summary>
    /// Ends the current <see cref="TryRead(Span{byte}, int, out int)"/> wait early (it returns false), or the next one when no
    /// read is waiting. Cheap and safe from any thread: the engine's command queue calls it after
    /// queuing work. Signals that arrive before a wait starts merge into one.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    public void Wake()
    {
        bool added = false;
        try
        {
            _wake.DangerousAddRef(ref added);
            Signal();
        }
        finally
        {
            if (added)
                _wake.DangerousRelease();
        }
    }

    private void Signal()
    {
        ulong one = 1;
        LibC.Write(_wake.Fd, (byte*)&one, sizeof(ulong));
    }

    /// <summary>
    /// Writes one whole IP packet into the device; the kernel receives it as if it had arrived on the
    /// interface. Safe to call from any thread, also while another thread waits in a read.
    /// </summary>
    /// <param name="packet">One complete IPv4 or IPv6 packet, starting at its version nibble.</param>
    /// <exception cref="ArgumentException">The packet is empty.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    /// <exception cref="TunDeviceException">
    /// The kernel rejected the packet (EINVAL: not IPv4/IPv6, or longer than 64 KiB), the interface
    /// is down (EIO), or it was deleted under the device (EBADFD).
    /// </exception>
    public void Write(ReadOnlySpan<byte> packet) => Write(packet, VirtioNetHeader.None);

    /// <summary>
    /// Writes one IP packet preceded by <paramref name="header"/>: a TCP super-segment for the
    /// kernel to cut (gso TCPV4/TCPV6), or a packet whose checksum the kernel completes
    /// (NEEDS_CSUM with the pseudo-header sum in the field). The kernel checks the header as
    /// virtio_net_hdr_to_skb does and refuses an inconsistent one with EINVAL.
    /// </summary>
    /// <param name="packet">One IPv4 or IPv6 packet (a super-segment up to 65535 bytes of IPv4 total length or IPv6 payload).</param>
    /// <param name="header">Its virtio-net header; <see cref="VirtioNetHeader.None"/> for an ordinary packet.</param>
    /// <exception cref="ArgumentException">The packet is empty.</exception>
    /// <exception cref="InvalidOperationException">The header is not None but the device has no virtio-net header.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    /// <exception cref="TunDeviceException">As for <see cref="Write(ReadOnlySpan{byte})"/>; EINVAL also for a header the kernel refuses.</exception>
    public void Write(ReadOnlySpan<byte> packet, in VirtioNetHeader header)
    {
        if (packet.IsEmpty)
            throw new ArgumentException("An IP packet cannot be empty.", nameof(packet));
        if (!HasVirtioNetHeader && (header.Flags != VirtioNetFlags.None || header.GsoType != VirtioGsoType.None))
            throw new InvalidOperationException($"TUN device '{Name}' has no virtio-net header to carry offload metadata.");
        byte* raw = stackalloc byte[VirtioNet.HeaderLength];
        if (HasVirtioNetHeader)
            VirtioNet.write(header, new Span<byte>(raw, VirtioNet.HeaderLength));
        if (_ring is { } ring)
        {
            WriteRing(ring, new ReadOnlySpan<byte>(raw, HasVirtioNetHeader ? VirtioNet.HeaderLength : 0), packet, default, default);
            return;
        }
        WriteDirect(packet, default, default, raw);
    }

    // The reader thread's writes of one piece queue in the ring (sent with its next enter, in
    // order); a gather write, or any other thread's write, first sends what is queued and then
    // goes directly, under the ring's gate so that the two kinds keep one order.
    private void WriteRing(TunRing ring, ReadOnlySpan<byte> header, ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail)
    {
        using var held = Held.Of(_tun, ring);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        lock (ring.Gate)
        {
            if (payload.IsEmpty && payloadTail.IsEmpty && ring.OnReaderThread && ring.TryQueueWrite(header, head))
                return;
            ring.Submit();
            fixed (byte* raw = header)
                WriteDirect(head, payload, payloadTail, raw);
        }
    }

    /// <summary>
    /// <see cref="Write(ReadOnlySpan{byte}, in VirtioNetHeader)"/> for a packet given in three
    /// consecutive pieces, handed to the kernel as they are by one writev(2): the kernel copies
    /// each byte once, straight from where it lives (a connection's send ring), into its buffer.
    /// </summary>
    /// <param name="head">The packet's first bytes (IP and transport headers); not empty.</param>
    /// <param name="payload">The bytes that follow <paramref name="head"/> (may be empty).</param>
    /// <param name="payloadTail">The bytes that follow <paramref name="payload"/> (may be empty).</param>
    /// <param name="header">Its virtio-net header; <see cref="VirtioNetHeader.None"/> for an ordinary packet.</param>
    /// <exception cref="ArgumentException"><paramref name="head"/> is empty.</exception>
    /// <exception cref="InvalidOperationException">The header is not None but the device has no virtio-net header.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    /// <exception cref="TunDeviceException">As for <see cref="Write(ReadOnlySpan{byte}, in VirtioNetHeader)"/>.</exception>
    public void WriteGather(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail, in VirtioNetHeader header)
    {
        if (head.IsEmpty)
            throw new ArgumentException("An IP packet cannot start with an empty piece.", nameof(head));
        if (!HasVirtioNetHeader && (header.Flags != VirtioNetFlags.None || header.GsoType != VirtioGsoType.None))
            throw new InvalidOperationException($"TUN device '{Name}' has no virtio-net header to carry offload metadata.");
        byte* raw = stackalloc byte[VirtioNet.HeaderLength];
        if (HasVirtioNetHeader)
            VirtioNet.write(header, new Span<byte>(raw, VirtioNet.HeaderLength));
        if (_ring is { } ring)
        {
            // In io_uring mode the loop's earlier writes may still be queued in the ring: they
            // go first, so that packets leave in the order written.
            WriteRing(ring, new ReadOnlySpan<byte>(raw, HasVirtioNetHeader ? VirtioNet.HeaderLength : 0), head, payload, payloadTail);
            return;
        }
        WriteDirect(head, payload, payloadTail, raw);
    }

    // One packet in up to three pieces (after the virtio-net header, if the device has one),
    // written by one write(2), or writev(2) for several pieces.
    private void WriteDirect(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail, byte* raw)
    {
        LibC.IoVec* pieces = stackalloc LibC.IoVec[4];
        bool added = false;
        try
        {
            _tun.DangerousAddRef(ref added);
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            fixed (byte* h = head)
            fixed (byte* p = payload)
            fixed (byte* t = payloadTail)
            {
                int count = 0;
                if (HasVirtioNetHeader)
                    pieces[count++] = new LibC.IoVec { Base = raw, Length = VirtioNet.HeaderLength };
                pieces[count++] = new LibC.IoVec { Base = h, Length = (nuint)head.Length };
                if (!payload.IsEmpty)
                    pieces[count++] = new LibC.IoVec { Base = p, Length = (nuint)payload.Length };
                if (!payloadTail.IsEmpty)
                    pieces[count++] = new LibC.IoVec { Base = t, Length = (nuint)payloadTail.Length };
                while (true)
                {
                    // A TUN write takes the whole packet or nothing.
                    nint n = count == 1 ? LibC.Write(_tun.Fd, h, (nuint)head.Length) : LibC.Writev(_tun.Fd, pieces, count);
                    if (n >= 0)
                        return;
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == LibC.EINTR)
                        continue;
                    if (errno == LibC.EAGAIN)
                    {
                        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
                        // The kernel's backlog is full: wait for room instead of dropping our own packet.
                        var fd = new LibC.PollFd { Fd = _tun.Fd, Events = LibC.POLLOUT };
                        LibC.Poll(&fd, 1, 100);
                        continue;
                    }

                    throw ReadWriteError("write", errno);
                }
            }
        }
        finally
        {
            if (added)
                _tun.DangerousRelease();
        }
    }

    private TunDeviceException ReadWriteError(string operation, int errno)
    {
        string? advice = errno switch
        {
            LibC.EBADFD => $"Interface '{Name}' was deleted while the device was open.",
            LibC.EIO => $"Interface '{Name}' is down: set it up first (KernelLink.SetUp or `ip link set {Name} up`).",
            LibC.EINVAL when operation == "write" =>
                "The kernel rejected the packet: it must start with an IPv4 or IPv6 header and be at most 65535 bytes.",
            _ => null,
        };
        return TunDeviceException.For($"{operation} on TUN interface '{Name}'", errno, advice);
    }

    /// <summary>
    /// Closes the device. A read blocked on another thread ends promptly with
    /// <see cref="ObjectDisposedException"/>. An interface made by <see cref="Create(string)"/> is deleted
    /// by the kernel, taking its addresses and routes with it; an attached one stays. Idempotent.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;

        // Wake every waiter first; the eventfd stays signalled, so later waits end at once too.
        // The handles then close when the last waiter has released them.
        Wake();
        if (_ring is { } ring)
        {
            // Writes still queued go out before the ring is torn down (a last RST, say).
            bool added = false;
            try
            {
                ring.DangerousAddRef(ref added);
                lock (ring.Gate)
                    ring.Submit();
            }
            catch (Exception e) when (e is TunDeviceException or ObjectDisposedException)
            {
            }
            finally
            {
                if (added)
                    ring.DangerousRelease();
            }
            ring.Dispose();
        }
        _tun.Dispose();
        _wake.Dispose();
    }

    /// <summary>The interface name, e.g. "tun0".</summary>
    public override string ToString() => Name;

    /// <summary>
    /// Holds up to three handles open (SafeHandle.DangerousAddRef) until disposed, so that a
    /// descriptor, or the ring whose entries name descriptors and whose memory the kernel writes,
    /// outlives the system call using it even if Dispose runs meanwhile (see FileDescriptorHandle).
    /// Released in the reverse order; if an add-ref throws (the handle is closed), the ones
    /// already added are released.
    /// </summary>
    private ref struct Held
    {
        private SafeHandle? _first, _second, _third;

        internal static Held Of(SafeHandle first, SafeHandle? second = null, SafeHandle? third = null)
        {
            var held = new Held();
            try
            {
                held._first = Add(first);
                held._second = second is null ? null : Add(second);
                held._third = third is null ? null : Add(third);
            }
            catch
            {
                held.Dispose();
                throw;
            }
            return held;
        }

        private static SafeHandle Add(SafeHandle handle)
        {
            bool added = false;
            handle.DangerousAddRef(ref added);
            return handle;
        }

        public void Dispose()
        {
            _third?.DangerousRelease();
            _second?.DangerousRelease();
            _first?.DangerousRelease();
            _first = _second = _third = null;
        }
    }
}
