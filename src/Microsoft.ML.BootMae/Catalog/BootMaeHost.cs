using System.Globalization;
using System.Reflection;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.BootMae;

/// <summary>
/// The one non-public touch of ML.NET: catalogs do not expose their environment, so read it by reflection to route
/// log lines into <c>MLContext.Log</c> and to read what the MLContext holds there: its seed, <c>GpuDeviceId</c>,
/// <c>FallbackToCpu</c> and the flag that <c>MLContext.CancelExecution()</c> sets. ML.NET 5.0.1 declares all of them on
/// internal interfaces (<c>IHostEnvironmentInternal</c>, <c>ICancelable</c>) that its environment implements, and
/// its own trainers read them the same way (<c>env.CheckAlive()</c>, <c>TorchUtils.InitializeDevice</c>). Correctness
/// never depends on it: when the reflection fails the components log through their callbacks only, use
/// <see cref="DefaultSeed"/>, take the device from their Options alone and stop only on the Options' token.
/// </summary>
internal static class BootMaeHost
{
    /// <summary>Seed used when neither the options nor the MLContext give one (ML.NET's TorchSharp trainers use 1 too).</summary>
    internal const int DefaultSeed = BootMaePretrainerSettings.DefaultSeed;

    /// <summary>The catalog's <see cref="IHostEnvironment"/>, or null where ML.NET's internals have changed.</summary>
    internal static IHostEnvironment? TryGetEnvironment(object? catalog)
    {
        if (catalog is null)
        {
            return null;
        }

        try
        {
            // TransformsCatalog, ModelOperationsCatalog and the trainer catalogs implement the internal IInternalCatalog.
            foreach (var iface in catalog.GetType().GetInterfaces())
            {
                if (iface.Name == "IInternalCatalog" && iface.GetProperty("Environment") is { } property
                    && property.GetValue(catalog) is IHostEnvironment env)
                {
                    return env;
                }
            }

            for (var type = catalog.GetType(); type is not null; type = type.BaseType)
            {
                foreach (var field in type.GetFields(BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public))
                {
                    if (typeof(IHostEnvironment).IsAssignableFrom(field.FieldType) && field.GetValue(catalog) is IHostEnvironment env)
                    {
                        return env;
                    }
                }

                foreach (var property in type.GetProperties(BindingFlags.Instance | BindingFlags.NonPublic))
                {
                    if (typeof(IHostEnvironment).IsAssignableFrom(property.PropertyType) && property.GetIndexParameters().Length == 0
                        && property.GetValue(catalog) is IHostEnvironment env)
                    {
                        return env;
                    }
                }
            }
        }
        catch (Exception ex) when (ex is TargetInvocationException or MemberAccessException or InvalidOperationException)
        {
            // Internals moved: fall back to callbacks only.
        }

        return null;
    }

    /// <summary>The seed the MLContext was created with (<c>new MLContext(seed)</c>), or null when unseeded or unreadable.</summary>
    internal static int? TryGetSeed(IHostEnvironment? env)
    {
        if (env is null)
        {
            return null;
        }

        try
        {
            foreach (var iface in env.GetType().GetInterfaces())
            {
                if (iface.Name == "IHostEnvironmentInternal" && iface.GetProperty("Seed") is { } property)
                {
                    return property.GetValue(env) as int?;
                }
            }
        }
        catch (Exception ex) when (ex is TargetInvocationException or MemberAccessException or InvalidOperationException)
        {
            // Internals moved: no seed.
        }

        return null;
    }

    /// <summary>Options seed, else the MLContext's seed, else <see cref="DefaultSeed"/>.</summary>
    internal static int ResolveSeed(int? optionsSeed, IHostEnvironment? env) => optionsSeed ?? TryGetSeed(env) ?? DefaultSeed;

    /// <summary>
    /// <c>MLContext.GpuDeviceId</c> and <c>MLContext.FallbackToCpu</c> as the catalog's environment holds them (the
    /// MLContext's setters write through to it), or nulls where they cannot be read.
    /// </summary>
    internal static (int? GpuDeviceId, bool? FallbackToCpu) TryGetDeviceSettings(IHostEnvironment? env)
    {
        if (InternalInterface(env, "IHostEnvironmentInternal") is not { } iface)
        {
            return (null, null);
        }

        try
        {
            return (iface.GetProperty("GpuDeviceId")?.GetValue(env) as int?, iface.GetProperty("FallbackToCpu")?.GetValue(env) as bool?);
        }
        catch (Exception ex) when (ex is TargetInvocationException or MemberAccessException or InvalidOperationException)
        {
            return (null, null);
        }
    }

    /// <summary>
    /// A probe of the flag <c>MLContext.CancelExecution()</c> sets on the environment (<c>ICancelable.IsCanceled</c>;
    /// once set it stays set), or null where it cannot be read.
    /// </summary>
    internal static Func<bool>? TryGetCancellationProbe(IHostEnvironment? env)
    {
        if (InternalInterface(env, "ICancelable")?.GetProperty("IsCanceled") is not { } property || property.PropertyType != typeof(bool))
        {
            return null;
        }

        return () =>
        {
            try
            {
                return property.GetValue(env) is true;
            }
            catch (Exception ex) when (ex is TargetInvocationException or MemberAccessException or InvalidOperationException)
            {
                return false;
            }
        };
    }

    /// <summary>
    /// The device a trainer uses: each of the Options' <c>Device</c>, <c>GpuDeviceId</c> and <c>FallbackToCpu</c>
    /// that is set wins; those left unset (<see cref="BootMaeDevice.Auto"/>, null, null) come from the MLContext. As in
    /// ML.NET's own TorchSharp trainers, a non-null <c>MLContext.GpuDeviceId</c> asks for that GPU, and
    /// <c>MLContext.FallbackToCpu</c> (false unless set) says whether the CPU may stand in when there is none; with
    /// no <c>MLContext.GpuDeviceId</c> the MLContext has no say and the old defaults hold (fallback allowed).
    /// </summary>
    internal static DeviceRequest ResolveDevice(BootMaeTrainingOptionsBase options, IHostEnvironment? env)
    {
        ArgumentNullException.ThrowIfNull(options);
        var (contextGpu, contextFallback) = TryGetDeviceSettings(env);
        // ML.NET reads MLContext.FallbackToCpu only together with a GpuDeviceId (TorchUtils.InitializeDevice), and the
        // MLContext's own value is false until set, so it applies only when the MLContext asks for a GPU.
        bool fallback = options.FallbackToCpu ?? (contextGpu is null ? null : contextFallback) ?? true;
        int gpuDeviceId = options.GpuDeviceId ?? contextGpu ?? 0;
        if (options.Device != BootMaeDevice.Auto || contextGpu is not { } contextDevice)
        {
            return new DeviceRequest(options.Device, gpuDeviceId, fallback, Origin: null);
        }

        string origin = string.Create(CultureInfo.InvariantCulture,
            $"MLContext.GpuDeviceId = {contextDevice} (Options.Device is Auto) asks for a GPU, with FallbackToCpu = {fallback} from {(options.FallbackToCpu is null ? "the MLContext" : "the Options")}");
        return new DeviceRequest(BootMaeDevice.Cuda, gpuDeviceId, fallback, origin);
    }

    private static Type? InternalInterface(IHostEnvironment? env, string name)
    {
        if (env is null)
        {
            return null;
        }

        try
        {
            return env.GetType().GetInterfaces().FirstOrDefault(i => i.Name == name && i.Namespace == "Microsoft.ML.Runtime");
        }
        catch (Exception ex) when (ex is TargetInvocationException or MemberAccessException or InvalidOperationException)
        {
            return null;
        }
    }
}

/// <summary>What a trainer asks <see cref="Training.TorchDevices.Resolve(DeviceRequest, Action{string})"/> for, after merging the Options with the MLContext.</summary>
/// <param name="Device">The requested device.</param>
/// <param name="GpuDeviceId">The CUDA device index.</param>
/// <param name="FallbackToCpu">Whether the CPU may stand in for a missing GPU.</param>
/// <param name="Origin">Null when the Options decided; otherwise how the MLContext's settings led to this request (for messages).</param>
internal readonly record struct DeviceRequest(BootMaeDevice Device, int GpuDeviceId, bool FallbackToCpu, string? Origin);

/// <summary>
/// Writes a component's messages to the MLContext log (when the environment could be reached) and to an optional user
/// callback. Thread-safe; dispose it to close the ML.NET channel.
/// </summary>
internal sealed class BootMaeLogger : IDisposable
{
    private readonly object _gate = new();
    private readonly IChannel? _channel;
    private readonly Action<string>? _callback;
    private bool _disposed;

    internal BootMaeLogger(IHostEnvironment? env, string componentName, Action<string>? callback = null)
    {
        _callback = callback;
        try
        {
            _channel = env?.Register(componentName).Start(componentName);
        }
        catch (InvalidOperationException)
        {
            _channel = null;
        }
    }

    internal void Info(string message) => Write(message, warning: false);

    internal void Warning(string message) => Write(message, warning: true);

    private void Write(string message, bool warning)
    {
        lock (_gate)
        {
            if (!_disposed && _channel is not null)
            {
                // The single-argument overloads take the text verbatim (no format placeholders).
                if (warning)
                {
                    _channel.Warning(MessageSensitivity.None, message);
                }
                else
                {
                    _channel.Info(MessageSensitivity.None, message);
                }
            }
        }

        _callback?.Invoke(warning ? "Warning: " + message : message);
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            _channel?.Dispose();
        }
    }
}
