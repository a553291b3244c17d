using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;
using System.Globalization;

namespace BootMae.Samples;

/// <summary>A bad command line or input; the message says what to change. The samples exit with code 2 for it.</summary>
public sealed class SampleUsageException(string message) : Exception(message);

/// <summary>
/// The samples' command lines on System.CommandLine: typed options whose help shows their defaults, values checked
/// while parsing (invariant culture, ranges, choices), one-line errors with exit code 2, and Ctrl+C turned into the
/// <see cref="CancellationToken"/> that the training Options take.
/// </summary>
public static class SampleCommandLine
{
    /// <summary>Exit code of a bad command line or input.</summary>
    public const int UsageExitCode = 2;

    /// <summary>Exit code after Ctrl+C stopped the run (128 + SIGINT, as shells report it).</summary>
    public const int CanceledExitCode = 130;

    /// <summary>A whole-number option in [<paramref name="min"/>, <paramref name="max"/>] with a default.</summary>
    public static Option<int> Int(string name, string description, int defaultValue, int min = 1, int max = int.MaxValue)
    {
        var option = new Option<int>(name)
        {
            Description = description,
            HelpName = "N",
            DefaultValueFactory = _ => defaultValue,
            CustomParser = result => ParseInt(result, name, min, max),
        };
        return option;
    }

    /// <summary>A text option with a default.</summary>
    public static Option<string> Text(string name, string helpName, string description, string defaultValue) => new(name)
    {
        Description = description,
        HelpName = helpName,
        DefaultValueFactory = _ => defaultValue,
    };

    /// <summary>A text option without a default (null when absent).</summary>
    public static Option<string?> OptionalText(string name, string helpName, string description) => new(name)
    {
        Description = description,
        HelpName = helpName,
    };

    /// <summary>A path to a file that must exist when given.</summary>
    public static Option<string?> ExistingFile(string name, string helpName, string description, string hint)
    {
        var option = OptionalText(name, helpName, description);
        option.Validators.Add(result =>
        {
            if (result.GetValueOrDefault<string?>() is { } path && !File.Exists(path))
            {
                result.AddError($"{name}: no file '{Path.GetFullPath(path)}'. {hint}");
            }
        });
        return option;
    }

    /// <summary>A switch that takes no value.</summary>
    public static Option<bool> Flag(string name, string description) => new(name)
    {
        Description = description,
        Arity = ArgumentArity.Zero,
    };

    /// <summary>One of <paramref name="choices"/> (case-insensitive; the value is the choice as written here).</summary>
    public static Option<string> Choice(string name, string description, string defaultValue, IReadOnlyList<string> choices)
    {
        var option = new Option<string>(name)
        {
            Description = description,
            HelpName = string.Join('|', choices),
            DefaultValueFactory = _ => defaultValue,
        };
        option.CustomParser = result =>
        {
            var text = result.Tokens[0].Value;
            var match = choices.FirstOrDefault(c => c.Equals(text, StringComparison.OrdinalIgnoreCase));
            if (match is null)
            {
                result.AddError($"{name} '{text}' is not known: use one of {string.Join(", ", choices)}.");
            }

            return match ?? defaultValue;
        };
        return option;
    }

    /// <summary>One or more values: <c>--name v1 v2 ...</c>.</summary>
    public static Option<string[]> Many(string name, string helpName, string description) => new(name)
    {
        Description = description,
        HelpName = helpName,
        Arity = ArgumentArity.OneOrMore,
        AllowMultipleArgumentsPerToken = true,
    };

    /// <summary>True when <paramref name="option"/> was written on the command line (not just defaulted).</summary>
    public static bool Given(ParseResult parse, Option option)
    {
        ArgumentNullException.ThrowIfNull(parse);
        return parse.GetResult(option) is { Implicit: false };
    }

    /// <summary>The option's value when given, otherwise <paramref name="fallback"/> (a default that depends on other options, e.g. --quick).</summary>
    public static T ValueOr<T>(ParseResult parse, Option<T> option, T fallback) => Given(parse, option) ? parse.GetValue(option)! : fallback;

    /// <summary>
    /// Parses <paramref name="args"/> against <paramref name="command"/>, then runs <paramref name="main"/> with a token
    /// that Ctrl+C cancels. <c>--help</c> prints the generated help and returns 0; a bad command line or a
    /// <see cref="SampleUsageException"/> prints one line, <c>error: ...</c>, to <paramref name="error"/> and returns 2;
    /// a cancelled run prints what was kept and returns 130.
    /// </summary>
    /// <param name="command">The sample's root command, with its options.</param>
    /// <param name="args">The command line.</param>
    /// <param name="main">The sample; returns its exit code.</param>
    /// <param name="output">Where help goes (default <see cref="Console.Out"/>).</param>
    /// <param name="error">Where errors go (default <see cref="Console.Error"/>).</param>
    /// <param name="cancellation">Cancels the run as Ctrl+C does (tests); Ctrl+C is handled only when this is omitted.</param>
    public static int Run(RootCommand command, IReadOnlyList<string> args, Func<ParseResult, CancellationToken, int> main,
        TextWriter? output = null, TextWriter? error = null, CancellationToken? cancellation = null)
    {
        ArgumentNullException.ThrowIfNull(command);
        ArgumentNullException.ThrowIfNull(main);
        output ??= Console.Out;
        error ??= Console.Error;
        // The sample runs below (with the token); the command's own action only marks "no help, no directive".
        command.Action ??= new RunSample();
        // No @response files: a token is what it says (an image path may start with @).
        var parse = command.Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });
        if (parse.Action is ParseErrorAction || (parse.Errors.Count > 0 && parse.Action is not HelpAction))
        {
            // One line: the first problem, and where to look.
            error.WriteLine($"error: {parse.Errors[0].Message} (see --help)");
            return UsageExitCode;
        }

        if (parse.Action is not RunSample)
        {
            // --help, --version, [suggest] and the other directives.
            return parse.Invoke(new InvocationConfiguration { Output = output, Error = error });
        }

        using var source = cancellation is { } token ? CancellationTokenSource.CreateLinkedTokenSource(token) : new CancellationTokenSource();
        ConsoleCancelEventHandler? handler = null;
        if (cancellation is null)
        {
            handler = (_, e) =>
            {
                if (source.IsCancellationRequested)
                {
                    return; // the second Ctrl+C ends the process at once
                }

                e.Cancel = true;
                error.WriteLine("Ctrl+C: stopping after the current step (press it again to quit at once)...");
                source.Cancel();
            };
            Console.CancelKeyPress += handler;
        }

        try
        {
            return main(parse, source.Token);
        }
        catch (SampleUsageException e)
        {
            error.WriteLine($"error: {e.Message}");
            return UsageExitCode;
        }
        catch (OperationCanceledException e) when (source.IsCancellationRequested)
        {
            error.WriteLine($"Cancelled. {e.Message}");
            return CanceledExitCode;
        }
        finally
        {
            if (handler is not null)
            {
                Console.CancelKeyPress -= handler;
            }
        }
    }

    /// <summary>
    /// Runs <paramref name="train"/>; when it is cancelled, throws an <see cref="OperationCanceledException"/> whose
    /// message is <paramref name="kept"/>'s: what the stopped run left behind (a checkpoint, a saved encoder).
    /// </summary>
    public static T ExplainCancellation<T>(Func<T> train, Func<string> kept)
    {
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(kept);
        try
        {
            return train();
        }
        catch (OperationCanceledException e)
        {
            throw new OperationCanceledException(kept(), e, e.CancellationToken);
        }
    }

    /// <summary>"its checkpoint is FOLDER/step-N" for the newest checkpoint in <paramref name="folder"/>, or "no checkpoint was written (no step was finished)".</summary>
    public static string DescribeCheckpoint(string folder)
    {
        var newest = Directory.Exists(folder)
            ? Directory.GetFileSystemEntries(folder).OrderByDescending(p => File.GetLastWriteTimeUtc(p)).ThenByDescending(p => p, StringComparer.Ordinal).FirstOrDefault()
            : null;
        return newest is null ? $"no checkpoint was written in {folder} (no step was finished)" : $"its last checkpoint is {newest}";
    }

    private sealed class RunSample : SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parseResult) => 0;
    }

    private static int ParseInt(ArgumentResult result, string name, int min, int max)
    {
        var text = result.Tokens[0].Value;
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value))
        {
            result.AddError($"{name} needs a whole number, not '{text}'.");
        }
        else if (value < min || value > max)
        {
            result.AddError($"{name} must be between {min} and {max}, not {value}.");
        }

        return value;
    }
}
