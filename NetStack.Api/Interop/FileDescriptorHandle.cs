using System.Runtime.InteropServices;

namespace NetStack.Interop;

/// <summary>
/// Owns a Linux file descriptor and closes it exactly once.
/// </summary>
/// <remarks>
/// SafeHandle's reference count is what makes a blocking read safe to interrupt: a reader holds a
/// reference (<see cref="SafeHandle.DangerousAddRef"/>) while it polls and reads, and
/// <see cref="SafeHandle.Dispose()"/> from another thread only marks the handle closed; the real
/// close(2) runs when the last reader lets go. So a descriptor number is never closed while a
/// system call still uses it, and can never be reused under a reader's feet.
/// </remarks>
internal sealed class FileDescriptorHandle : SafeHandle
{
    /// <summary>Takes ownership of <paramref name="fd"/>.</summary>
    internal FileDescriptorHandle(int fd)
        : base(invalidHandleValue: -1, ownsHandle: true) => SetHandle(fd);

    /// <summary>The descriptor number. Only meaningful while a reference is held.</summary>
    internal int Fd => (int)handle;

    /// <inheritdoc/>
    public override bool IsInvalid => handle == -1;

    /// <inheritdoc/>
    protected override bool ReleaseHandle() => LibC.Close((int)handle) == 0;
}
