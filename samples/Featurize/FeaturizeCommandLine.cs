using System.CommandLine;

namespace BootMae.Samples.Featurize;

/// <summary>The featurization sample's command line: its options, help text and the settings they give.</summary>
public sealed class FeaturizeCommandLine
{
    private readonly Option<string?> _encoder = SampleCommandLine.ExistingFile("--encoder", "PATH",
        "A saved encoder (the quickstart writes out/quickstart/encoder.bootmae) [default: pretrain briefly]",
        "Run the quickstart first (it writes out/quickstart/encoder.bootmae) or leave --encoder out to pretrain here.");

    private readonly Option<int> _epochs = SampleCommandLine.Int("--epochs", $"Pretraining epochs when no --encoder is given (--quick: {FeaturizeSettings.Quick.PretrainEpochs})", FeaturizeSettings.Default.PretrainEpochs, 1, 10_000);
    private readonly Option<int> _queries = SampleCommandLine.Int("--queries", "Query images for the similarity search", FeaturizeSettings.Default.Queries, 1, 10);
    private readonly Option<string> _output = SampleCommandLine.Text("--output", "DIR", $"Pictures, checkpoints and data (--quick: {FeaturizeSettings.Quick.OutputDirectory})", FeaturizeSettings.Default.OutputDirectory);
    private readonly Option<bool> _quick = SampleCommandLine.Flag("--quick", "A smoke run of under a minute on a small subset");
    private readonly Option<bool> _resume = SampleCommandLine.Flag("--resume", "Continue pretraining from the checkpoint in DIR/checkpoints (left by a run stopped with Ctrl+C)");

    /// <summary>Builds the command.</summary>
    public FeaturizeCommandLine()
    {
        Command = new RootCommand(
            "BootMAE featurization: embed images with a pretrained encoder, train an ordinary ML.NET classifier on the " +
            "embeddings, and find the images most like a query image (cosine similarity of embeddings). " +
            "Run with: dotnet run -c Release --project samples/Featurize [-- options]")
        {
            _encoder, _epochs, _queries, _output, _quick, _resume,
        };
    }

    /// <summary>The root command (no subcommands).</summary>
    public RootCommand Command { get; }

    /// <summary>The settings the parsed options describe.</summary>
    public FeaturizeSettings Settings(ParseResult parse)
    {
        var settings = parse.GetValue(_quick) ? FeaturizeSettings.Quick : FeaturizeSettings.Default;
        return settings with
        {
            EncoderPath = parse.GetValue(_encoder),
            PretrainEpochs = SampleCommandLine.ValueOr(parse, _epochs, settings.PretrainEpochs),
            Queries = parse.GetValue(_queries),
            OutputDirectory = SampleCommandLine.ValueOr(parse, _output, settings.OutputDirectory),
            Resume = parse.GetValue(_resume),
        };
    }
}
