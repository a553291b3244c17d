using System.Globalization;
using Microsoft.ML.BootMae;
using Microsoft.ML.BootMae.Visualization;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace BootMae.Samples;

/// <summary>
/// Shows BootMAE training progress from <c>MetricsCallback</c>. On a terminal, <see cref="Run{T}"/> draws a Spectre.Console
/// progress bar with the loss, images per second and the trainer's ETA, and prints one line per epoch above it. When
/// the output is redirected (CI logs, files, a test's writer) it prints plain lines instead: one per epoch and a step
/// line at every tenth of the run. Keeps every report for curves and step counts.
/// </summary>
public sealed class TrainingProgress
{
    private readonly TextWriter _output;
    private readonly string _name;
    private readonly int _epochs;
    private readonly int _batchSize;
    private readonly bool _live;
    private readonly List<BootMaeTrainingMetrics> _reports = new();
    private ProgressTask? _task;
    private string _eta = string.Empty;
    private long _nextPlainStep;

    /// <summary>Progress of one run called <paramref name="name"/> of <paramref name="epochs"/> epochs.</summary>
    /// <param name="output">Where lines go; the live bar is drawn only when this is <see cref="Console.Out"/> on an interactive terminal.</param>
    /// <param name="name">Short run name shown at the start of each line.</param>
    /// <param name="epochs">Planned epochs, for the "epoch e/E" counter.</param>
    /// <param name="batchSize">Images per step, for the throughput of a whole epoch.</param>
    public TrainingProgress(TextWriter output, string name, int epochs, int batchSize)
    {
        _batchSize = batchSize;
        _output = output;
        _name = name;
        _epochs = epochs;
        _live = ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive;
    }

    /// <summary>True when <see cref="Run{T}"/> draws a live progress bar; false when it prints plain lines.</summary>
    public bool IsLive => _live;

    /// <summary>Every report received, in order.</summary>
    public IReadOnlyList<BootMaeTrainingMetrics> Reports => _reports;

    /// <summary>Optimizer steps done (the last report's step).</summary>
    public long Steps => _reports.Count == 0 ? 0 : _reports[^1].Step;

    /// <summary>
    /// Runs <paramref name="train"/> (a <c>Fit</c> whose Options' <c>MetricsCallback</c> is <see cref="Report"/>) under
    /// the live progress bar on a terminal, or as it is when the output is redirected.
    /// </summary>
    public T Run<T>(Func<T> train)
    {
        ArgumentNullException.ThrowIfNull(train);
        if (!_live)
        {
            return train();
        }

        return AnsiConsole.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                new EtaColumn(this), new ElapsedTimeColumn())
            .Start(context =>
            {
                _task = context.AddTask(Markup.Escape(_name), autoStart: true, maxValue: 1);
                _task.IsIndeterminate = true;
                try
                {
                    var result = train();
                    _task.Value = _task.MaxValue;
                    return result;
                }
                finally
                {
                    _task.StopTask();
                    _task = null;
                }
            });
    }

    /// <summary>Pass this as the trainer's <c>MetricsCallback</c>.</summary>
    public void Report(BootMaeTrainingMetrics m)
    {
        ArgumentNullException.ThrowIfNull(m);
        lock (_reports)
        {
            _reports.Add(m);
            var c = CultureInfo.InvariantCulture;
            var losses = string.Format(c, "loss {0:F4}", m.Loss);
            if (m.PixelLoss is { } pixel && m.FeatureLoss is { } feature)
            {
                losses += string.Format(c, " (pixel {0:F4}, feature {1:F4})", pixel, feature);
            }

            if (m.Accuracy is { } accuracy)
            {
                losses += string.Format(c, ", {0} accuracy {1:P1}", m.Dataset == BootMaeDataset.Validation ? "validation" : "train", accuracy);
            }

            var eta = m.Eta is { } e ? " ETA " + Clock(e) : string.Empty;
            if (_task is { } task)
            {
                task.IsIndeterminate = false;
                task.MaxValue = Math.Max(1, m.TotalSteps);
                task.Value = m.Step;
                task.Description = Markup.Escape(string.Format(c, "{0}  {1}  {2,5:F0} img/s", _name, losses, m.ImagesPerSecond));
                _eta = eta.Trim();
            }

            if (m.IsEpochEnd)
            {
                // Throughput over the whole epoch: the epoch-end report itself only covers the time since the last step report.
                var epochStart = _reports.LastOrDefault(r => r.IsEpochEnd && r.Epoch < m.Epoch && r.Dataset == m.Dataset);
                var seconds = (m.Elapsed - (epochStart?.Elapsed ?? TimeSpan.Zero)).TotalSeconds;
                var rate = seconds > 0 && _batchSize > 0 ? (m.Step - (epochStart?.Step ?? 0)) * _batchSize / seconds : m.ImagesPerSecond;
                WriteLine(string.Format(c, "  {0} epoch {1,3}/{2}  step {3,5}/{4}  {5}  {6,5:F0} img/s  {7}{8}",
                    _name, m.Epoch + 1, _epochs, m.Step, m.TotalSteps, losses, rate, Clock(m.Elapsed), eta));
            }
            else if (!_live && m.TotalSteps > 0 && m.Step >= _nextPlainStep)
            {
                // Plain lines for logs: one at every tenth of the run, not one per report.
                _nextPlainStep = m.Step + Math.Max(1, m.TotalSteps / 10);
                WriteLine(string.Format(c, "  {0} step {1}/{2} ({3,3:F0}%)  {4}  {5:F0} img/s{6}",
                    _name, m.Step, m.TotalSteps, 100.0 * m.Step / m.TotalSteps, losses, m.ImagesPerSecond, eta));
            }
        }
    }

    private void WriteLine(string line)
    {
        if (_task is not null)
        {
            // Spectre.Console draws it above the live bar.
            AnsiConsole.WriteLine(line);
        }
        else
        {
            _output.WriteLine(line);
        }
    }

    /// <summary>Formats a duration as h:mm:ss or m:ss.</summary>
    public static string Clock(TimeSpan t) => t.TotalHours >= 1
        ? t.ToString(@"h\:mm\:ss", CultureInfo.InvariantCulture)
        : t.ToString(@"m\:ss", CultureInfo.InvariantCulture);

    // The trainer's own ETA (it knows the schedule), not Spectre's estimate from the bar's speed.
    private sealed class EtaColumn(TrainingProgress owner) : ProgressColumn
    {
        public override IRenderable Render(RenderOptions options, ProgressTask task, TimeSpan deltaTime) => new Text(owner._eta);
    }
}
