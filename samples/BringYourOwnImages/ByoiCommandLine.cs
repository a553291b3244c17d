using System.CommandLine;

namespace BootMae.Samples.BringYourOwnImages;

/// <summary>The bring-your-own-images sample's command line: its options, help text and the settings they give.</summary>
public sealed class ByoiCommandLine
{
    private static readonly ByoiSettings Defaults = new();

    private readonly Option<string?> _images = SampleCommandLine.OptionalText("--images", "DIR", "Image folder: DIR/<class>/*.png for fine-tuning; any images under DIR for pretraining");
    private readonly Option<string> _mode = SampleCommandLine.Choice("--mode", "Fine-tune a classifier or pretrain an encoder", Defaults.Mode, ["finetune", "pretrain"]);
    private readonly Option<bool> _unlabeled = SampleCommandLine.Flag("--unlabeled", "The folder's sub-folders are not classes (pretraining only)");
    private readonly Option<string> _preset = SampleCommandLine.Choice("--preset", "Network shape", "small28", SampleArchitectures.Names);
    private readonly Option<int> _epochs = SampleCommandLine.Int("--epochs", "Training epochs", Defaults.Epochs, 1, 100_000);
    private readonly Option<int> _batch = SampleCommandLine.Int("--batch", "Images per step", Defaults.BatchSize, 1, 4096);
    private readonly Option<string?> _encoder = SampleCommandLine.OptionalText("--encoder", "PATH", "Fine-tune from this pretrained encoder (written by --mode pretrain) instead of a random start");
    private readonly Option<string> _model = SampleCommandLine.Text("--model", "OUT.zip", "Where to save the model (the encoder and checkpoints go next to it)", Defaults.ModelPath);
    private readonly Option<string[]> _predict = SampleCommandLine.Many("--predict", "FILE...", "Classify these files after training, or with --model alone, without training");
    private readonly Option<string?> _makeExample = SampleCommandLine.OptionalText("--make-example", "DIR", "Write Fashion-MNIST as DIR/train/<class>/*.png and DIR/new/*.png to try the commands on");
    private readonly Option<bool> _resume = SampleCommandLine.Flag("--resume", "Continue training from the checkpoint next to --model (left by a run stopped with Ctrl+C)");

    /// <summary>Builds the command.</summary>
    public ByoiCommandLine()
    {
        Command = new RootCommand(
            "BootMAE on your own images: pretrain on unlabelled images or fine-tune a classifier on images sorted into one " +
            "sub-folder per class, save the model, and predict new files. Image files: " + string.Join(' ', ByoiSample.Extensions) +
            " (any size; resized to the preset's size). Run with: dotnet run -c Release --project samples/BringYourOwnImages -- --images DIR [options]")
        {
            _images, _mode, _unlabeled, _preset, _epochs, _batch, _encoder, _model, _predict, _makeExample, _resume,
        };
    }

    /// <summary>The root command (no subcommands).</summary>
    public RootCommand Command { get; }

    /// <summary>The folder <c>--make-example</c> asks for, or null.</summary>
    public string? MakeExample(ParseResult parse) => parse.GetValue(_makeExample);

    /// <summary>The settings the parsed options describe.</summary>
    public ByoiSettings Settings(ParseResult parse) => new()
    {
        ImageDirectory = parse.GetValue(_images),
        Mode = parse.GetValue(_mode)!,
        Unlabeled = parse.GetValue(_unlabeled),
        Architecture = SampleArchitectures.FromName(parse.GetValue(_preset)!),
        Epochs = parse.GetValue(_epochs),
        BatchSize = parse.GetValue(_batch),
        EncoderPath = parse.GetValue(_encoder),
        ModelPath = parse.GetValue(_model)!,
        Predict = parse.GetValue(_predict) ?? [],
        Resume = parse.GetValue(_resume),
    };
}
