using System.Reflection;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.BootMae;

/// <summary>
/// The one non-public touch of ML.NET: catalogs do not expose their environment, so read it by reflection to route
/// log lines into <c>MLContext.Log</c> and to read the MLContext's seed. Correctness never depends on it: when the
/// reflection fails the components log through their callbacks only and use <see cref="DefaultSeed"/>.
/// </summary>
internal static class BootMaeHost
{
    /// <summary>Seed used when neither the options nor the MLContext give one (ML.NET's TorchSharp trainers use 1 too).</summary>
    internal const int DefaultSeed = 1;

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
}

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
