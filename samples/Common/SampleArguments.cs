using System.Globalization;

namespace BootMae.Samples;

/// <summary>A bad command line; the message says what to change.</summary>
public sealed class SampleUsageException(string message) : Exception(message);

/// <summary>
/// A small command-line reader: <c>--name value</c>, <c>--flag</c> and <c>--name v1 v2 ...</c>. Read every option you
/// support, then call <see cref="ThrowOnUnknown"/> so typos are reported instead of ignored.
/// </summary>
public sealed class SampleArguments
{
    private readonly Dictionary<string, List<string>> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _read = new(StringComparer.Ordinal);

    /// <summary>Splits <paramref name="args"/> into options and their values.</summary>
    public SampleArguments(IReadOnlyList<string> args)
    {
        ArgumentNullException.ThrowIfNull(args);
        List<string>? current = null;
        foreach (var arg in args)
        {
            if (arg.StartsWith("--", StringComparison.Ordinal))
            {
                var name = arg[2..];
                if (name.Length == 0)
                {
                    throw new SampleUsageException("An empty option '--' was given.");
                }

                if (_values.ContainsKey(name))
                {
                    throw new SampleUsageException($"--{name} is given twice.");
                }

                current = _values[name] = new List<string>();
            }
            else if (current is null)
            {
                throw new SampleUsageException($"Unexpected argument '{arg}': options start with --.");
            }
            else
            {
                current.Add(arg);
            }
        }
    }

    /// <summary>True when <c>--help</c> or <c>-h</c>-style help was asked for.</summary>
    public bool WantsHelp => _values.ContainsKey("help");

    /// <summary>True when the switch is present; it takes no value.</summary>
    public bool Flag(string name)
    {
        _read.Add(name);
        if (!_values.TryGetValue(name, out var values))
        {
            return false;
        }

        if (values.Count > 0)
        {
            throw new SampleUsageException($"--{name} takes no value (got '{values[0]}').");
        }

        return true;
    }

    /// <summary>The option's single value, or <paramref name="fallback"/> when it is absent.</summary>
    public string? String(string name, string? fallback = null)
    {
        _read.Add(name);
        if (!_values.TryGetValue(name, out var values))
        {
            return fallback;
        }

        return values.Count == 1 ? values[0] : throw new SampleUsageException($"--{name} needs exactly one value, e.g. --{name} VALUE.");
    }

    /// <summary>All values of the option (at least one when present), or an empty list.</summary>
    public IReadOnlyList<string> Strings(string name)
    {
        _read.Add(name);
        if (!_values.TryGetValue(name, out var values))
        {
            return Array.Empty<string>();
        }

        return values.Count > 0 ? values : throw new SampleUsageException($"--{name} needs at least one value.");
    }

    /// <summary>The option's integer value in [<paramref name="min"/>, <paramref name="max"/>], or <paramref name="fallback"/>.</summary>
    public int Int(string name, int fallback, int min = 1, int max = int.MaxValue)
    {
        var text = String(name);
        if (text is null)
        {
            return fallback;
        }

        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value))
        {
            throw new SampleUsageException($"--{name} needs a whole number, not '{text}'.");
        }

        return value >= min && value <= max ? value : throw new SampleUsageException($"--{name} must be between {min} and {max}, not {value}.");
    }

    /// <summary>The option's value, which must be one of <paramref name="choices"/> (case-insensitive), or <paramref name="fallback"/>.</summary>
    public string Choice(string name, string fallback, params string[] choices)
    {
        var text = String(name);
        if (text is null)
        {
            return fallback;
        }

        return choices.FirstOrDefault(c => c.Equals(text, StringComparison.OrdinalIgnoreCase))
            ?? throw new SampleUsageException($"--{name} '{text}' is not known: use one of {string.Join(", ", choices)}.");
    }

    /// <summary>Throws for any option that was given but never read.</summary>
    public void ThrowOnUnknown()
    {
        var unknown = _values.Keys.Where(k => !_read.Contains(k) && k != "help").ToArray();
        if (unknown.Length > 0)
        {
            throw new SampleUsageException($"Unknown option{(unknown.Length > 1 ? "s" : "")}: {string.Join(", ", unknown.Select(u => "--" + u))}.");
        }
    }

    /// <summary>Runs <paramref name="main"/>, printing usage errors with <paramref name="usage"/> and returning exit code 2 for them.</summary>
    public static int Run(string[] args, string usage, Func<SampleArguments, int> main)
    {
        try
        {
            var arguments = new SampleArguments(args);
            if (arguments.WantsHelp)
            {
                Console.WriteLine(usage);
                return 0;
            }

            return main(arguments);
        }
        catch (SampleUsageException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            Console.Error.WriteLine();
            Console.Error.WriteLine(usage);
            return 2;
        }
    }
}
