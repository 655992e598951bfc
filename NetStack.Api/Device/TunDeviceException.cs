using NetStack.Interop;

namespace NetStack.Device;

/// <summary>
/// A system call on the TUN device or an rtnetlink request for its configuration failed.
/// </summary>
/// <remarks>
/// Thrown by <see cref="TunDevice"/> and <see cref="KernelLink"/>. <see cref="Errno"/> carries the
/// Linux error number and <see cref="Operation"/> the step that failed; the message says what the
/// error means here and what to do about it (load the tun module, get CAP_NET_ADMIN, pick another
/// name, ...). Caller bugs that can be seen before any system call (a name longer than 15 bytes,
/// an address of the wrong family) are <see cref="ArgumentException"/>s instead.
/// </remarks>
public sealed class TunDeviceException : IOException
{
    /// <summary>Creates the exception for <paramref name="errno"/> returned by <paramref name="operation"/>.</summary>
    /// <param name="operation">The step that failed, e.g. "open /dev/net/tun" or "RTM_NEWADDR".</param>
    /// <param name="errno">The Linux error number.</param>
    /// <param name="message">What went wrong and what to do about it.</param>
    public TunDeviceException(string operation, int errno, string message)
        : base(message) =>
        (Operation, Errno) = (operation, errno);

    /// <summary>The Linux error number (errno) the failing call returned, e.g. 1 for EPERM.</summary>
    public int Errno { get; }

    /// <summary>The step that failed, e.g. "open /dev/net/tun", "TUNSETIFF" or "RTM_NEWADDR".</summary>
    public string Operation { get; }

    /// <summary>The same error as a <see cref="System.Net.Sockets.SocketError"/> where one fits, else
    /// <see cref="System.Net.Sockets.SocketError.SocketError"/>.</summary>
    public System.Net.Sockets.SocketError SocketError => Errno switch
    {
        LibC.EPERM or LibC.EACCES => System.Net.Sockets.SocketError.AccessDenied,
        LibC.EADDRNOTAVAIL => System.Net.Sockets.SocketError.AddressNotAvailable,
        LibC.EEXIST => System.Net.Sockets.SocketError.AddressAlreadyInUse,
        LibC.EINVAL => System.Net.Sockets.SocketError.InvalidArgument,
        LibC.ENETDOWN => System.Net.Sockets.SocketError.NetworkDown,
        LibC.EAGAIN => System.Net.Sockets.SocketError.WouldBlock,
        LibC.EOPNOTSUPP => System.Net.Sockets.SocketError.OperationNotSupported,
        _ => System.Net.Sockets.SocketError.SocketError,
    };

    /// <summary>
    /// Builds the exception for a failed call, with the standard advice for the errno values
    /// every operation can meet (missing privilege) unless <paramref name="advice"/> says better,
    /// then the kernel's own explanation (<paramref name="kernelText"/>, from a netlink extended ACK).
    /// </summary>
    internal static TunDeviceException For(string operation, int errno, string? advice = null, string? kernelText = null)
    {
        string what = $"{operation} failed: {LibC.ErrorText(errno)} ({LibC.ErrorName(errno)})";

        // The caller's advice knows the context best; missing privilege is the usual story otherwise.
        string hint = advice ?? (errno is LibC.EPERM or LibC.EACCES
            ? "This needs CAP_NET_ADMIN: run as root, or inside `unshare --user --map-root-user --net` " +
              "(a private user and network namespace where you hold it)."
            : "");
        if (kernelText is not null)
            hint = hint.Length == 0 ? $"Kernel says: {kernelText}." : $"{hint} Kernel says: {kernelText}.";
        return new TunDeviceException(operation, errno, hint.Length == 0 ? what + "." : $"{what}. {hint}");
    }
}
