eventhub_name = "example-eventhub"
