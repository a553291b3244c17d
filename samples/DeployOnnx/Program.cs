using BootMae.Samples;
using BootMae.Samples.DeployOnnx;

var commandLine = new DeployOnnxCommandLine();
return SampleCommandLine.Run(commandLine.Command, args, (parse, cancellation) =>
{
    if (commandLine.ServeModel(parse) is { } zip)
    {
        var onnx = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(zip))!, "classifier.onnx");
        var served = DeployOnnxSample.Serve(zip, onnx, commandLine.ServeImages(parse)!, Console.Out);
        Console.WriteLine($"Predicted {served.Count} images with ML.NET + ONNX Runtime.");
        return 0;
    }

    DeployOnnxSample.Run(commandLine.Settings(parse), Console.Out, cancellation);
    return 0;
});
