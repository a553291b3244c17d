using System.CommandLine;

namespace BootMae.Samples.DeployOnnx;

/// <summary>The deployment sample's command line: its options, help text and what they ask for.</summary>
public sealed class DeployOnnxCommandLine
{
    private readonly Option<string?> _encoder = SampleCommandLine.ExistingFile("--encoder", "PATH",
        "A saved encoder to fine-tune (the quickstart writes out/quickstart/encoder.bootmae) [default: a random encoder]",
        "Run the quickstart first or leave --encoder out.");

    private readonly Option<int> _epochs = SampleCommandLine.Int("--epochs", $"Fine-tuning epochs (--quick: {DeployOnnxSettings.Quick.FineTuneEpochs})", DeployOnnxSettings.Default.FineTuneEpochs, 1, 1000);
    private readonly Option<string> _output = SampleCommandLine.Text("--output", "DIR", $"Data, classifier.onnx and model.zip (--quick: {DeployOnnxSettings.Quick.OutputDirectory})", DeployOnnxSettings.Default.OutputDirectory);
    private readonly Option<string?> _serve = SampleCommandLine.ExistingFile("--serve", "ZIP",
        "Only serve: predict --images TSV with a saved model.zip (next to its classifier.onnx); never loads libtorch",
        "Run the sample without --serve first: it writes model.zip and classifier.onnx into --output.");

    private readonly Option<string?> _images = SampleCommandLine.ExistingFile("--images", "TSV",
        "The images to predict with --serve (ImagePath column, paths relative to the folder saved in the zip)",
        "It needs a header line, then one image path per line.");

    private readonly Option<bool> _quick = SampleCommandLine.Flag("--quick", "A smoke run of a few seconds");

    /// <summary>Builds the command.</summary>
    public DeployOnnxCommandLine()
    {
        Command = new RootCommand(
            "BootMAE deployment without libtorch: fine-tune a classifier with TorchSharp, export it to ONNX, save an ML.NET " +
            "pipeline (LoadImages -> ResizeImages -> ExtractPixels -> ApplyOnnxModel) with mlContext.Model.Save, then load it " +
            "with mlContext.Model.Load and predict with ML.NET and ONNX Runtime only. " +
            "Run with: dotnet run -c Release --project samples/DeployOnnx [-- options]")
        {
            _encoder, _epochs, _output, _serve, _images, _quick,
        };
        Command.Validators.Add(result =>
        {
            bool serve = result.GetResult(_serve) is not null;
            if (serve && result.GetResult(_images) is null)
            {
                result.AddError("--serve needs --images TSV (a header line, then one image path per line).");
            }
            else if (!serve && result.GetResult(_images) is not null)
            {
                result.AddError("--images is only read with --serve ZIP.");
            }
            else if (serve && new Option[] { _encoder, _epochs, _output, _quick }.FirstOrDefault(o => result.GetResult(o) is { Implicit: false }) is { } other)
            {
                result.AddError($"--serve takes only --images, not {other.Name}.");
            }
        });
    }

    /// <summary>The root command (no subcommands).</summary>
    public RootCommand Command { get; }

    /// <summary>The model.zip to serve, or null to train and export.</summary>
    public string? ServeModel(ParseResult parse) => parse.GetValue(_serve);

    /// <summary>The TSV of images that <c>--serve</c> predicts.</summary>
    public string? ServeImages(ParseResult parse) => parse.GetValue(_images);

    /// <summary>The settings the parsed options describe.</summary>
    public DeployOnnxSettings Settings(ParseResult parse)
    {
        var settings = parse.GetValue(_quick) ? DeployOnnxSettings.Quick : DeployOnnxSettings.Default;
        return settings with
        {
            EncoderPath = parse.GetValue(_encoder),
            FineTuneEpochs = SampleCommandLine.ValueOr(parse, _epochs, settings.FineTuneEpochs),
            OutputDirectory = SampleCommandLine.ValueOr(parse, _output, settings.OutputDirectory),
        };
    }
}
