using BootMae.Samples;
using BootMae.Samples.DeployOnnx;

const string usage = """
    BootMAE deployment without libtorch: fine-tune a classifier with TorchSharp, export it to ONNX, save an ML.NET
    pipeline (LoadImages -> ResizeImages -> ExtractPixels -> ApplyOnnxModel) with mlContext.Model.Save, then load it
    with mlContext.Model.Load and predict with ML.NET and ONNX Runtime only.

    Usage: dotnet run -c Release --project samples/DeployOnnx [-- options]
      --encoder PATH   a saved encoder to fine-tune (the quickstart writes out/quickstart/encoder.bootmae)
      --epochs N       fine-tuning epochs (default 3)
      --output DIR     data, classifier.onnx and model.zip (default out/deploy-onnx)
      --serve ZIP      only serve: predict --images TSV with a saved model.zip (next to its classifier.onnx); never loads libtorch
      --images TSV     the images to predict with --serve (ImagePath column, paths relative to the folder saved in the zip)
      --quick          a smoke run of a few seconds
      --help           this text
    """;

return SampleArguments.Run(args, usage, arguments =>
{
    if (arguments.String("serve") is { } zip)
    {
        var images = arguments.String("images") ?? throw new SampleUsageException("--serve needs --images TSV (a header line, then one image path per line).");
        arguments.ThrowOnUnknown();
        var onnx = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(zip))!, "classifier.onnx");
        var served = DeployOnnxSample.Serve(zip, onnx, images, Console.Out);
        Console.WriteLine($"Predicted {served.Count} images with ML.NET + ONNX Runtime.");
        return 0;
    }

    var settings = arguments.Flag("quick") ? DeployOnnxSettings.Quick : DeployOnnxSettings.Default;
    var encoder = arguments.String("encoder");
    if (encoder is not null && !File.Exists(encoder))
    {
        throw new SampleUsageException($"--encoder: no file '{Path.GetFullPath(encoder)}'. Run the quickstart first or leave --encoder out.");
    }

    settings = settings with
    {
        EncoderPath = encoder,
        FineTuneEpochs = arguments.Int("epochs", settings.FineTuneEpochs, 1, 1000),
        OutputDirectory = arguments.String("output", settings.OutputDirectory)!,
    };
    arguments.ThrowOnUnknown();
    DeployOnnxSample.Run(settings, Console.Out);
    return 0;
});
