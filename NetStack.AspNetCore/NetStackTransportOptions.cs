namespace NetStack.AspNetCore;

/// <summary>Options of the NetStack transport for Kestrel (<see cref="NetStackTransportFactory"/>).</summary>
public sealed class NetStackTransportOptions
{
    /// <summary>
    /// Established connections a listener queues for Kestrel's accept loop at most (the listen
    /// backlog, positive). Default 512.
    /// </summary>
    public int Backlog { get; set; } = 512;

    /// <summary>
    /// Bytes received from a connection and not yet read by Kestrel that the transport buffers at
    /// most before it stops reading the connection (then the TCP receive window closes and the peer
    /// waits). Positive; default 1 MiB.
    /// </summary>
    public long MaxReadBufferSize { get; set; } = 1024 * 1024;

    /// <summary>
    /// Bytes Kestrel may have written and the transport not yet handed to the connection before
    /// Kestrel's writes wait. Positive; default 64 KiB.
    /// </summary>
    public long MaxWriteBufferSize { get; set; } = 64 * 1024;

    /// <summary>
    /// True (default) to also take endpoints with an unspecified address (<c>http://*:PORT</c>,
    /// <c>ListenAnyIP</c>): they then mean every address of the stack. False leaves them to the
    /// next transport (Kestrel's sockets, on the kernel's addresses).
    /// </summary>
    public bool BindUnspecifiedAddresses { get; set; } = true;
}
