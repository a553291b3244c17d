using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;
using System.Globalization;

namespace Microsoft.ML.BootMae.Benchmarks;

/// <summary>
/// The benchmark app's commands on System.CommandLine: each command with its options (and their defaults) in
/// <c>--help</c>, values checked while parsing, one-line errors with exit code 2.
/// </summary>
internal static class CommandLine
{
    internal const int UsageExitCode = 2;

    /// <summary>Parses and runs <paramref name="args"/> against <paramref name="root"/>; returns the exit code.</summary>
    public static int Invoke(RootCommand root, IReadOnlyList<string> args, TextWriter? output = null, TextWriter? error = null)
    {
        output ??= Console.Out;
        error ??= Console.Error;
        // No @response files: a token is what it says (as before System.CommandLine).
        var parse = root.Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });
        if (parse.Action is ParseErrorAction || (parse.Errors.Count > 0 && parse.Action is not HelpAction))
        {
            error.WriteLine($"error: {parse.Errors[0].Message} (see --help)");
            return UsageExitCode;
        }

        return parse.Invoke(new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false });
    }

    /// <summary>An integer option, checked against [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public static Option<int> Int(string name, string description, int defaultValue, int min = 1, int max = int.MaxValue)
    {
        return new Option<int>(name)
        {
            Description = description,
            HelpName = "N",
            DefaultValueFactory = _ => defaultValue,
            CustomParser = result => Number(result, name, min, max, long.Parse) is { } value ? (int)value : 0,
        };
    }

    /// <summary>An integer option without a default (null when absent).</summary>
    public static Option<int?> NullableInt(string name, string description, int min = 1, int max = int.MaxValue) => new(name)
    {
        Description = description,
        HelpName = "N",
        CustomParser = result => Number(result, name, min, max, long.Parse) is { } value ? (int)value : null,
    };

    /// <summary>A long option without a default (null when absent).</summary>
    public static Option<long?> NullableLong(string name, string description, long min = 0) => new(name)
    {
        Description = description,
        HelpName = "N",
        CustomParser = result => Number(result, name, min, long.MaxValue, long.Parse),
    };

    /// <summary>A long option with a default.</summary>
    public static Option<long> Long(string name, string description, long defaultValue, long min = 0) => new(name)
    {
        Description = description,
        HelpName = "N",
        DefaultValueFactory = _ => defaultValue,
        CustomParser = result => Number(result, name, min, long.MaxValue, long.Parse) ?? 0,
    };

    /// <summary>A real-number option with a default (invariant culture: <c>1.5e-3</c>).</summary>
    public static Option<double> Double(string name, string description, double defaultValue, double min = double.MinValue, double max = double.MaxValue) => new(name)
    {
        Description = description,
        HelpName = "X",
        DefaultValueFactory = _ => defaultValue,
        CustomParser = result => Number(result, name, min, max, double.Parse) ?? 0,
    };

    /// <summary>A real-number option without a default (null when absent).</summary>
    public static Option<double?> NullableDouble(string name, string description, double min = double.MinValue, double max = double.MaxValue) => new(name)
    {
        Description = description,
        HelpName = "X",
        CustomParser = result => Number(result, name, min, max, double.Parse),
    };

    /// <summary>
    /// A <c>true</c>/<c>false</c> option that needs its value (<c>--probe false</c>); read it with
    /// <see cref="ValueOr{T}"/> and its default (System.CommandLine's help does not show bool defaults, so the description does).
    /// </summary>
    public static Option<bool> Bool(string name, string description, bool defaultValue) => new(name)
    {
        Description = $"{description} [default: {(defaultValue ? "true" : "false")}]",
        HelpName = "true|false",
        Arity = ArgumentArity.ExactlyOne,
        CustomParser = result => ParseBool(result, name) ?? defaultValue,
    };

    /// <summary>The option's value when the command has it and it was given, otherwise <paramref name="fallback"/>.</summary>
    public static T ValueOr<T>(ParseResult parse, Option<T> option, T fallback) =>
        parse.GetResult(option) is { Implicit: false } ? parse.GetValue(option)! : fallback;

    /// <summary>A <c>true</c>/<c>false</c> option without a default (null when absent).</summary>
    public static Option<bool?> NullableBool(string name, string description) => new(name)
    {
        Description = description,
        HelpName = "true|false",
        Arity = ArgumentArity.ExactlyOne,
        CustomParser = result => ParseBool(result, name),
    };

    /// <summary>A text option without a default (null when absent).</summary>
    public static Option<string?> Text(string name, string helpName, string description) => new(name) { Description = description, HelpName = helpName };

    /// <summary>
    /// One of the keys of <paramref name="choices"/> (case-insensitive), mapped to its value; the help shows the keys
    /// and <paramref name="defaultName"/>. Read it with <see cref="ValueOr{T}"/> and <paramref name="defaultValue"/>.
    /// </summary>
    public static Option<T> Choice<T>(string name, string description, T defaultValue, string defaultName, params (string Name, T Value)[] choices) => new(name)
    {
        Description = $"{description} [default: {defaultName}]",
        HelpName = string.Join('|', choices.Select(c => c.Name).Distinct()),
        CustomParser = result => ParseChoice(result, name, choices, defaultValue),
    };

    /// <summary>Like <see cref="Choice{T}"/> without a default (null when absent).</summary>
    public static Option<T?> NullableChoice<T>(string name, string description, params (string Name, T Value)[] choices)
        where T : struct => new(name)
    {
        Description = description,
        HelpName = string.Join('|', choices.Select(c => c.Name).Distinct()),
        CustomParser = result => ParseChoice(result, name, choices.Select(c => (c.Name, (T?)c.Value)).ToArray(), null),
    };

    /// <summary>The choices of an enum, by their names in lower case.</summary>
    public static (string Name, T Value)[] EnumChoices<T>()
        where T : struct, Enum => Enum.GetValues<T>().Select(v => (v.ToString().ToLowerInvariant(), v)).ToArray();

    /// <summary>A comma-separated list parsed item by item; null when absent.</summary>
    public static Option<T[]?> List<T>(string name, string helpName, string description, Func<string, T?> parseItem, string itemHint) => new(name)
    {
        Description = description,
        HelpName = helpName,
        CustomParser = result =>
        {
            var text = result.Tokens[0].Value;
            var items = new List<T>();
            foreach (var part in text.Split(','))
            {
                if (parseItem(part.Trim()) is { } item)
                {
                    items.Add(item);
                }
                else
                {
                    result.AddError($"{name} '{text}': '{part}' is not {itemHint}.");
                    return null;
                }
            }

            return items.ToArray();
        },
    };

    /// <summary>An invariant-culture integer, or null.</summary>
    public static int? ParseIntItem(string text) => int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v : null;

    private static T? Number<T>(ArgumentResult result, string name, T min, T max, Func<string, IFormatProvider, T> parse)
        where T : struct, IComparable<T>
    {
        var text = result.Tokens[0].Value;
        T value;
        try
        {
            value = parse(text, CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            result.AddError($"{name} needs a {(typeof(T) == typeof(double) ? "number" : "whole number")}, not '{text}'.");
            return null;
        }

        if (value.CompareTo(min) < 0 || value.CompareTo(max) > 0)
        {
            result.AddError(string.Format(CultureInfo.InvariantCulture, "{0} must be between {1} and {2}, not {3}.", name, min, max, value));
            return null;
        }

        return value;
    }

    private static bool? ParseBool(ArgumentResult result, string name)
    {
        var text = result.Tokens[0].Value;
        if (bool.TryParse(text, out var value))
        {
            return value;
        }

        result.AddError($"{name} needs true or false, not '{text}'.");
        return null;
    }

    private static T ParseChoice<T>(ArgumentResult result, string name, (string Name, T Value)[] choices, T fallback)
    {
        var text = result.Tokens[0].Value;
        foreach (var (choice, value) in choices)
        {
            if (choice.Equals(text, StringComparison.OrdinalIgnoreCase))
            {
                return value;
            }
        }

        result.AddError($"{name} '{text}' is not known: use {string.Join(", ", choices.Select(c => c.Name).Distinct())}.");
        return fallback;
    }
}
