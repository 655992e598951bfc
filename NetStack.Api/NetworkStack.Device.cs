using NetStack.Device;

namespace NetStack;

public sealed partial class NetworkStack
{
    /// <summary>
    /// Starts the stack on a TUN (or TAP) device the caller already has, whose kernel side someone
    /// else configured: typically one made in another network namespace and handed over as a
    /// descriptor (<see cref="TunDevice.FromDescriptor"/>), as <c>netstack run</c> does. What
    /// <see cref="Start(NetStackOptions)"/> does after creating the device, without touching the
    /// kernel side (no MTU, addresses or link state are set): offloads are asked for when
    /// <see cref="NetStackOptions.Offloads"/> is on and the device has a virtio-net header, and the
    /// same device paths are chosen (io_uring, writer thread, faults, capture). The stack owns the
    /// device from here and disposes it, also when this throws.
    /// </summary>
    /// <param name="options">Addresses and limits; TunName, AttachExisting and the host addresses are not used; Mode must match the device (TUN or TAP).</param>
    /// <param name="device">The device.</param>
    /// <exception cref="ArgumentException">An option is invalid, or Mode does not match the device.</exception>
    /// <exception cref="ObjectDisposedException">The device is disposed.</exception>
    /// <exception cref="TunDeviceException">The kernel refused the offload request.</exception>
    /// <exception cref="IOException">The <see cref="NetStackOptions.CapturePath"/> file could not be created (also <see cref="UnauthorizedAccessException"/>).</exception>
    public static NetworkStack Start(NetStackOptions options, TunDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        NetworkStack stack;
        try
        {
            Validate(options);
            RefuseQueues(options);
            if (device.IsTap != (options.Mode == NetStackMode.Tap))
                throw new ArgumentException($"Mode {options.Mode} does not match device '{device.Name}', a {(device.IsTap ? "TAP" : "TUN")} device.", nameof(options));
            ObjectDisposedException.ThrowIf(device.FileDescriptor < 0, device);
            if (options.Offloads && options.Faults is null && device.HasVirtioNetHeader)
                device.SetOffloads(StackOffloads);
            stack = StartOnDevice(options, device, link: null);
        }
        catch
        {
            device.Dispose();
            throw;
        }
        return AwaitLink(stack);
    }
}
