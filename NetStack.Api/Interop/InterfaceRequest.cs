using System.Runtime.InteropServices;
using System.Text;

namespace NetStack.Interop;

/// <summary>
/// struct ifreq (net/if.h) on 64-bit Linux: a 16-byte interface name, then a 24-byte union whose
/// first member is the short flags word, or the int MTU, depending on the request.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 40)]
internal unsafe struct InterfaceRequest
{
    /// <summary>IFNAMSIZ: the name field's size, NUL included.</summary>
    internal const int NameSize = 16;

    // linux/sockios.h: requests answered by any socket of the interface's network namespace.
    internal const nuint SIOCGIFFLAGS = 0x8913;
    internal const nuint SIOCGIFMTU = 0x8921;

    // linux/if.h interface flags.
    internal const int IFF_UP = 0x1;
    internal const int IFF_RUNNING = 0x40;

    [FieldOffset(0)]
    internal fixed byte Name[NameSize];

    [FieldOffset(16)]
    internal short Flags;

    [FieldOffset(16)]
    internal int Value;

    /// <summary>A request for <paramref name="name"/> (cut to 15 bytes; callers validate first).</summary>
    internal static InterfaceRequest For(string name, short flags = 0)
    {
        InterfaceRequest request = default;
        Encoding.UTF8.GetBytes(name, new Span<byte>(request.Name, NameSize - 1));
        request.Flags = flags;
        return request;
    }

    /// <summary>The name field as a string (the kernel writes back the name it chose).</summary>
    internal readonly string NameText
    {
        get
        {
            fixed (byte* p = Name)
                return Encoding.UTF8.GetString(MemoryMarshal.CreateReadOnlySpanFromNullTerminated(p));
        }
    }

    /// <summary>
    /// Runs a SIOCGIF* <paramref name="request"/> for <paramref name="name"/> on a throwaway socket
    /// and returns the int at the start of the union (the flags zero-extended, or the MTU).
    /// </summary>
    /// <returns>0 on success, else the errno.</returns>
    internal static int Query(string name, nuint request, out int value)
    {
        value = 0;
        int socket = LibC.Socket(LibC.AF_INET, LibC.SOCK_DGRAM | LibC.SOCK_CLOEXEC, 0);
        if (socket < 0)
            return Marshal.GetLastPInvokeError();
        try
        {
            InterfaceRequest ifr = For(name);
            if (LibC.Ioctl(socket, request, &ifr) < 0)
                return Marshal.GetLastPInvokeError();
            value = request == SIOCGIFFLAGS ? (ushort)ifr.Flags : ifr.Value;
            return 0;
        }
        finally
        {
            LibC.Close(socket);
        }
    }
}
