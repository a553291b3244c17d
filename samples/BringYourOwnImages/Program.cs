using BootMae.Samples;
using BootMae.Samples.BringYourOwnImages;

var commandLine = new ByoiCommandLine();
return SampleCommandLine.Run(commandLine.Command, args, (parse, cancellation) =>
{
    var settings = commandLine.Settings(parse);
    if (commandLine.MakeExample(parse) is { } folder)
    {
        ByoiSample.MakeExample(folder, trainPerClass: 100, Console.Out);
        return 0;
    }

    ByoiSample.Run(settings, Console.Out, cancellation);
    return 0;
});
