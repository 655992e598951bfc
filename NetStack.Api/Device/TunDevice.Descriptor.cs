using System.Runtime.InteropServices;
using NetStack.Interop;

namespace NetStack.Device;

public sealed unsafe partial class TunDevice
{
    // _IOR('T', 210, unsigned int): fills a struct ifreq with the attached interface's name and flags.
    private const nuint TUNGETIFF = 0x800454D2;
    private const int F_GETFL = 3;
    private const int F_SETFL = 4;
    private const int F_GETFD = 1;
    private const int F_SETFD = 2;
    private const int FD_CLOEXEC = 1;

    // Set for a device whose interface lives in another network namespace (FromDescriptor): its
    // MTU cannot be asked for by name from here, so the creator's value stands in.
    private int? _foreignMtu;

    /// <summary>
    /// Takes over a TUN or TAP descriptor opened and attached elsewhere, typically by a helper
    /// process in another network namespace that passed it over a Unix socket (SCM_RIGHTS), as
    /// <c>netstack run</c> does. The name and the mode (TUN or TAP, with or without a virtio-net
    /// header) are read from the descriptor (TUNGETIFF); the interface cannot be looked up by name
    /// from this process's namespace, so <see cref="Mtu"/> reports <paramref name="mtu"/> and
    /// <see cref="InterfaceIndex"/> reports <paramref name="interfaceIndex"/>. The device owns the
    /// descriptor from here (it is made non-blocking and close-on-exec) and closes it on
    /// <see cref="Dispose"/>; the interface goes when its last descriptor does (unless persistent).
    /// <see cref="IsOwned"/> is true. When this throws, the descriptor stays the caller's.
    /// </summary>
    /// <param name="fileDescriptor">An open descriptor of /dev/net/tun after a successful TUNSETIFF.</param>
    /// <param name="mtu">The interface's MTU as its creator set it (68..65535).</param>
    /// <param name="interfaceIndex">The interface's index in its own namespace (0 when unknown).</param>
    /// <exception cref="ArgumentException">The descriptor is negative, or <paramref name="mtu"/> is out of range.</exception>
    /// <exception cref="TunDeviceException">The descriptor is not an attached TUN/TAP descriptor (TUNGETIFF failed: EBADF, EBADFD, ENOTTY), or an eventfd could not be made.</exception>
    public static TunDevice FromDescriptor(int fileDescriptor, int mtu, int interfaceIndex = 0)
    {
        if (fileDescriptor < 0)
            throw new ArgumentException($"{fileDescriptor} is not a file descriptor.", nameof(fileDescriptor));
        if (mtu is < KernelLink.MinMtu or > KernelLink.MaxMtu)
            throw new ArgumentException($"MTU {mtu} is outside {KernelLink.MinMtu}..{KernelLink.MaxMtu}.", nameof(mtu));
        InterfaceRequest request = default;
        if (LibC.Ioctl(fileDescriptor, TUNGETIFF, &request) < 0)
        {
            throw TunDeviceException.For($"TUNGETIFF on descriptor {fileDescriptor}", Marshal.GetLastPInvokeError(),
                "The descriptor is not a TUN/TAP descriptor attached to an interface.");
        }
        // The reader waits in poll() and must never block in read(); the descriptor must not
        // leak into programs this process starts.
        int status = Fcntl(fileDescriptor, F_GETFL, 0);
        if (status < 0 || Fcntl(fileDescriptor, F_SETFL, status | LibC.O_NONBLOCK) < 0)
            throw TunDeviceException.For($"fcntl O_NONBLOCK on descriptor {fileDescriptor}", Marshal.GetLastPInvokeError());
        int fdFlags = Fcntl(fileDescriptor, F_GETFD, 0);
        if (fdFlags < 0 || Fcntl(fileDescriptor, F_SETFD, fdFlags | FD_CLOEXEC) < 0)
            throw TunDeviceException.For($"fcntl FD_CLOEXEC on descriptor {fileDescriptor}", Marshal.GetLastPInvokeError());
        int wakeFd = LibC.EventFd(0, LibC.EFD_NONBLOCK | LibC.EFD_CLOEXEC);
        if (wakeFd < 0)
            throw TunDeviceException.For("eventfd", Marshal.GetLastPInvokeError());
        bool tap = (request.Flags & IFF_TAP) != 0;
        bool virtioNetHeader = (request.Flags & IFF_VNET_HDR) != 0;
        return new TunDevice(new FileDescriptorHandle(fileDescriptor), new FileDescriptorHandle(wakeFd), request.NameText, created: true, virtioNetHeader)
        {
            IsTap = tap,
            InterfaceIndex = interfaceIndex,
            _foreignMtu = mtu,
        };
    }

    // fcntl is variadic in C; an int third argument travels as a fixed one on x86_64 and arm64.
    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int fd, int command, int argument);
}
