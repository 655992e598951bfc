using System.Net;
using System.Net.NetworkInformation;
using Microsoft.Extensions.Logging;

namespace NetStack.Diagnostics;

/// <summary>
/// The log messages of the TAP-mode link layer (<see cref="Engine.EthernetPacketDevice"/>), under
/// the category <c>NetStack.Engine.EthernetPacketDevice</c>. Source-generated like
/// <see cref="NetStackLog"/>.
/// </summary>
internal static partial class LinkLog
{
    [LoggerMessage(EventId = 60, Level = LogLevel.Warning,
        Message = "Address conflict on {Interface}: {Mac} claims {Address}; defended with an ARP announcement")]
    public static partial void ArpConflictDefended(this ILogger logger, string @interface, PhysicalAddress mac, IPAddress address);

    [LoggerMessage(EventId = 61, Level = LogLevel.Warning,
        Message = "Address conflict on {Interface}: {Mac} claims {Address} again within the defend interval; keeping the address without defending")]
    public static partial void ArpConflictNotDefended(this ILogger logger, string @interface, PhysicalAddress mac, IPAddress address);
}
